"""A fix for vLLM 0.32's CPU model runner, applied by the plugin on CPU only."""

from __future__ import annotations

import logging

log = logging.getLogger("holitom_fx.vllm")


def enable_pruning_hook() -> None:
    """vLLM 0.32's CPU model runner replaces ``load_model`` without setting the pruning switch the GPU runner
    sets after loading (``is_multimodal_pruning_enabled``): set it, for HoliTom's M-RoPE models only."""
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner

    original = CPUModelRunner.load_model
    if getattr(original, "holitom", False):
        return

    def load_model(self, *args, **kwargs):
        original(self, *args, **kwargs)
        model = self.get_model()
        if getattr(model, "holitom", None) is not None and hasattr(model, "recompute_mrope_positions"):
            self.is_multimodal_pruning_enabled = True
            log.info("HoliTom: switched on the CPU runner's M-RoPE recompute hook (vLLM 0.32 leaves it off)")

    load_model.holitom = True
    CPUModelRunner.load_model = load_model
