"""HoliTom's outer stage inside vLLM, as a plugin (``pip install "holitom-fx[vllm]"``).

vLLM loads :func:`register` in every process (front end, engine core, workers) through the
``vllm.general_plugins`` entry point. It adds one architecture per supported model; a model is
switched on per launch by naming that architecture and the settings in ``--hf-overrides``::

    vllm serve DIR --hf-overrides '{"architectures": ["HoliTomLlavaOnevisionForConditionalGeneration"],
                                    "holitom": {"retain_ratio": 0.1, "tau": 0.8}}'

Nothing of vLLM is patched: each architecture is a subclass of vLLM's own model whose video
embedding path merges every video with ``holitom_fx.ops.outer_merge``, registered with a processing
info whose placeholder count comes from the same function (:func:`.common.merged_video_tokens`).
Importing this package does not import vLLM.
"""

from __future__ import annotations

#: Architecture name -> the class vLLM builds (imported lazily by vLLM's registry).
ARCHITECTURES = {
    "HoliTomLlavaOnevisionForConditionalGeneration":
        "holitom_fx.vllm_plugin.llava_onevision:HoliTomLlavaOnevisionForConditionalGeneration",
    "HoliTomQwen2_5_VLForConditionalGeneration":
        "holitom_fx.vllm_plugin.qwen2_5_vl:HoliTomQwen2_5_VLForConditionalGeneration",
    "HoliTomQwen3VLForConditionalGeneration": "holitom_fx.vllm_plugin.qwen3_vl:HoliTomQwen3VLForConditionalGeneration",
}


def register() -> None:
    """The ``vllm.general_plugins`` entry point: add HoliTom's architectures (idempotent, cheap)."""
    from vllm import ModelRegistry
    from vllm.platforms import current_platform

    supported = set(ModelRegistry.get_supported_archs())
    for architecture, target in ARCHITECTURES.items():
        if architecture not in supported:
            ModelRegistry.register_model(architecture, target)
    if current_platform.is_cpu():
        from .cpu_runner import enable_pruning_hook

        enable_pruning_hook()
