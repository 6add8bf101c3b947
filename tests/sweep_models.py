"""Transformers classes built tiny by the support sweep, for the backend tests of models without a
hand-written tiny builder: the model, the sweep's prompt for it, compiled copies."""

from __future__ import annotations

import functools

from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.sweep import build_inputs, build_tiny

IDENTITY = HoliTomConfig(retain_ratio=1.0, tau=1.5, inner_layer="off")
OUTER = HoliTomConfig(retain_ratio=0.5, tau=0.8, inner_layer="off")


class SweepModel:
    def __init__(self, name: str, model_types: list[str]):
        self.name, self.model_types = name, model_types

    def tiny(self):
        """A fresh instance (the same random weights every time)."""
        return build_tiny(self.name, self.model_types)

    @functools.cached_property
    def prompt(self) -> dict:
        """The sweep's video prompt, laid out on an uncompiled instance (it runs the model)."""
        return build_inputs(self.tiny())[0]

    def compiled(self, config: HoliTomConfig):
        """``(model, backend)``: a fresh instance under ``model.compile`` with a bound HoliTom backend."""
        model = self.tiny()
        backend = HoliTomBackend(config, compiler="eager").bind(model)
        model.compile(backend=backend)
        return model, backend
