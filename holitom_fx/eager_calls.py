"""``EagerCalls``: the bound model's forward calls that Dynamo ran eagerly, where no HoliTom graph runs.

Dynamo gives up on a frame it has compiled ``torch._dynamo.config.recompile_limit`` times (8) and runs it,
and everything it calls, uncompiled from then on, saying so only in its own log. transformers' models share
such frames (the forward wrapper in ``transformers.utils.generic``): with a few models compiled in one
process, a later one's prompt runs uncompiled and HoliTom never sees it, so nothing is merged; a decode step
that runs uncompiled after a merged prefill is not shifted to the merged prompt's positions.

``HoliTomBackend.bind(model)`` watches for such calls with a forward pre-hook on the model's input
embedding (``get_input_embeddings()``) and a forward hook on its output head (``get_output_embeddings()``),
both doing nothing while Dynamo traces (inside a compiled graph they are traced away): they run only when the
frames that embed the tokens and compute the logits run eagerly. The backend takes a call as uncompiled when
both ran eagerly with none of its decoder graphs in between (a model without an output head: at the
embedding). The model is not changed otherwise.
"""

from __future__ import annotations

from typing import Callable

import torch


def _module(model: torch.nn.Module, getter: str) -> torch.nn.Module | None:
    try:
        module = getattr(model, getter)()
    except (AttributeError, NotImplementedError):  # a model of its own without the transformers API
        return None
    return module if isinstance(module, torch.nn.Module) else None


class EagerCalls:
    """Hooks ``model``'s input embedding and output head: ``on_embed(ids)`` for ids embedded outside Dynamo,
    ``on_logits()`` when the output head runs outside Dynamo (right after ``on_embed`` without a head)."""

    def __init__(self, model: torch.nn.Module, on_embed: Callable[[torch.Tensor], None],
                 on_logits: Callable[[], None]):
        self._handles = []
        embeddings, head = _module(model, "get_input_embeddings"), _module(model, "get_output_embeddings")
        self.watching = embeddings is not None
        if not self.watching:
            return
        if head is None:
            def embed_and_decide(ids: torch.Tensor) -> None:
                on_embed(ids)
                on_logits()

            self._handles.append(embeddings.register_forward_pre_hook(self._embedded(embed_and_decide)))
            return
        self._handles.append(embeddings.register_forward_pre_hook(self._embedded(on_embed)))
        self._handles.append(head.register_forward_hook(self._head(on_logits)))

    @staticmethod
    def _embedded(on_embed: Callable[[torch.Tensor], None]):
        def seen(module, args):
            if torch.compiler.is_compiling():
                return None
            ids = args[0] if args else None
            if isinstance(ids, torch.Tensor) and not ids.is_floating_point() and ids.dim() >= 1:
                on_embed(ids)
            return None

        return seen

    @staticmethod
    def _head(on_logits: Callable[[], None]):
        def seen(module, args, output):
            if not torch.compiler.is_compiling():
                on_logits()
            return None

        return seen

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
