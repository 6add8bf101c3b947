"""The ``holitom`` model lmms-eval builds: ``base``'s own lmms-eval class, its loaded model compiled with HoliTom.

The instance lmms-eval gets is of a subclass of ``base``'s class (built per base class), so everything
lmms-eval does with ``--model NAME`` (simple or chat requests, accelerate, ``task_dict``) works unchanged;
its ``last_report`` is the backend's report of the last merged prefill. Needs lmms-eval installed.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
from typing import Any

import torch
from lmms_eval.api.model import lmms
from lmms_eval.models import get_model
from loguru import logger as log  # lmms-eval's logger: its CLI shows and filters it (--verbosity)

import holitom_fx
from holitom_fx.config import HoliTomConfig

from . import MODEL_NAME

#: model_args keys taken by HoliTom itself: its settings, plus ``base`` and the on/off switch.
SETTINGS = tuple(field.name for field in dataclasses.fields(HoliTomConfig))
_OWN_KEYS = ("base", "holitom")
#: Keys lmms-eval itself passes to every model (from --batch_size, --max_batch_size, --device).
_LMMS_EVAL_KEYS = ("batch_size", "max_batch_size", "device")


def load(base: str | None = None, *, holitom: bool = True, force_simple: bool = False, **kwargs: Any) -> lmms:
    """lmms-eval model ``base`` built from ``kwargs``, its transformers model compiled with HoliTom.

    ``kwargs`` are HoliTomConfig fields and ``base``'s own parameters; a key that is neither is an error
    naming it (before any checkpoint loads), as is a bad setting (HoliTomConfig names the field).
    ``holitom=False`` builds the same model uncompiled. ``force_simple`` picks ``base``'s simple class.
    """
    if not isinstance(base, str) or not base or base == MODEL_NAME:
        raise ValueError(f"--model {MODEL_NAME} needs base=NAME in --model_args, NAME an lmms-eval model that keeps "
                         f"a transformers model (e.g. base=llava_hf or base=qwen2_5_vl), got base={base!r}")
    if not isinstance(holitom, bool):
        raise ValueError(f"holitom={holitom!r} in --model_args: expected True or False")
    base_class = get_model(base, force_simple=force_simple)
    settings = {key: kwargs.pop(key) for key in SETTINGS if key in kwargs}
    _refuse_unknown(base, base_class, kwargs)
    config = HoliTomConfig(**settings)
    return _with_holitom(base_class)(holitom_config=config if holitom else None, **kwargs)


def _refuse_unknown(base: str, base_class: type, kwargs: dict) -> None:
    """Each key must be a parameter of ``base_class.__init__`` (lmms-eval's own keys pass as for any model):
    a misspelled HoliTom setting must not reach a base that drops or asserts on unknown keys."""
    params = [name for name, p in inspect.signature(base_class.__init__).parameters.items()
              if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    for key in kwargs:
        if key not in params and key not in _LMMS_EVAL_KEYS:
            near = difflib.get_close_matches(key, [*SETTINGS, *_OWN_KEYS, *params], n=1)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ValueError(f"unknown key {key!r} in --model_args of --model {MODEL_NAME}: not a HoliTom setting "
                             f"({', '.join(SETTINGS)}), nor base, holitom, nor a parameter of {base}'s "
                             f"{base_class.__name__} ({', '.join(params)}){hint}")


class _HoliTomModel:
    """Put before an lmms-eval model class: that class loads the model, then HoliTom compiles it."""

    def __init__(self, *, holitom_config: HoliTomConfig | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        model = getattr(self, "model", None)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{self.holitom_base.__name__} keeps no torch model in .model "
                            f"({type(model).__name__}): HoliTom needs an lmms-eval class that loads a transformers "
                            "model (llava_hf, qwen2_5_vl, ...)")
        self.holitom_config = holitom_config
        self.holitom_backend = None if holitom_config is None else holitom_fx.compile(model, holitom_config)
        log.info(f"HoliTom {'off' if holitom_config is None else f'on: {holitom_config}'} "
                 f"({type(model).__name__})")

    @property
    def last_report(self):
        """The backend's ``HoliTomReport`` of the last merged prefill; None while off or before one."""
        return None if self.holitom_backend is None else self.holitom_backend.last_report

    def generate_until(self, requests):
        out = super().generate_until(requests)
        self._log_report(len(requests))
        return out

    def loglikelihood(self, requests):
        out = super().loglikelihood(requests)
        self._log_report(len(requests))
        return out

    def _log_report(self, requests: int) -> None:
        """One line per call (all requests of one type), so a CLI run shows what HoliTom did, or that it did nothing."""
        if self.holitom_backend is None:
            return
        r = self.last_report
        if r is None:
            log.warning(f"HoliTom merged no prefill in {requests} request(s): no video reached the model, or its "
                        "graphs were passed through (see the warnings above)")
            return
        inner = "" if r.inner_layer is None else f", {r.tokens_after_inner} from decoder layer {r.inner_layer} on"
        log.info(f"HoliTom, last prefill of {requests} request(s): {r.tokens_in} visual tokens per row, "
                 f"{r.tokens_after_outer} after the outer stage{inner} ({r.frames} frames, saliency: {r.saliency})")


@functools.cache
def _with_holitom(base_class: type) -> type:
    """``base_class`` with HoliTom: one subclass per base class, named after it."""
    return type(f"HoliTom{base_class.__name__}", (_HoliTomModel, base_class),
                {"__module__": __name__, "__doc__": f"{base_class.__name__}, compiled with HoliTom.",
                 "holitom_base": base_class})


class HoliTom(lmms):
    """``--model holitom --force_simple``: calling it (as lmms-eval does) returns :func:`load`'s model.

    lmms-eval builds a model as ``cls(**model_args, batch_size=..., device=...)``; this class is that entry
    and is never an instance itself: what it returns is an instance of ``base``'s class with HoliTom.
    """

    is_simple = True

    def __new__(cls, base: str | None = None, holitom: bool = True, **kwargs: Any) -> lmms:
        return load(base, holitom=holitom, force_simple=cls.is_simple, **kwargs)


class HoliTomChat(HoliTom):
    """``--model holitom`` (lmms-eval's default, chat form): ``base``'s chat class where it has one."""

    is_simple = False
