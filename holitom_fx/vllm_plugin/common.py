"""What every HoliTom architecture in vLLM shares: its settings, its token count, its merge."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from ..config import INNER_OFF, HoliTomConfig
from ..ops import OuterMergeResult, exact_budget, feature_saliency, outer_merge

log = logging.getLogger("holitom_fx.vllm")

#: The key of the HoliTom settings in ``--hf-overrides`` (set on the model's HF config).
SETTINGS_KEY = "holitom"
_FIELDS = {field.name for field in dataclasses.fields(HoliTomConfig)}
_said_saliency = False


def holitom_config(hf_config: Any) -> HoliTomConfig:
    """The validated ``HoliTomConfig`` of a model launched with a HoliTom architecture.

    Read from ``hf_config.holitom`` (a dict from ``--hf-overrides``; absent: the defaults). The inner
    stage needs per-layer sequence lengths that vLLM's paged KV cache does not have, and vLLM fixes
    the placeholder count before the model runs (``budget="exact"``): asking for either is an error
    here, at start-up, not in a worker.
    """
    settings = getattr(hf_config, SETTINGS_KEY, None)
    if settings is None:
        settings = {}
    if isinstance(settings, HoliTomConfig):
        settings = dataclasses.asdict(settings)
    if not isinstance(settings, dict):
        raise ValueError(f"HoliTom settings ({SETTINGS_KEY!r} in --hf-overrides) must be a JSON object, "
                         f"got {settings!r}")
    unknown = sorted(set(settings) - _FIELDS)
    if unknown:
        raise ValueError(f"unknown HoliTom setting(s) {unknown} in --hf-overrides; known: {sorted(_FIELDS)}")
    if settings.get("inner_layer", INNER_OFF) != INNER_OFF:
        raise ValueError(f"HoliTom setting 'inner_layer' = {settings['inner_layer']!r}: the inner stage does not "
                         "run in vLLM (its paged KV cache has one sequence length for all layers); leave it out "
                         f"or set {INNER_OFF!r}")
    if settings.get("budget", "exact") != "exact":
        raise ValueError(f"HoliTom setting 'budget' = {settings['budget']!r}: vLLM fixes the number of video "
                         "placeholders before the model runs, so only 'exact' applies")
    return HoliTomConfig(**{**settings, "inner_layer": INNER_OFF, "budget": "exact"})


def merged_video_tokens(frames: int, tokens_per_frame: int, pass_through: int, config: HoliTomConfig) -> int:
    """Tokens one video keeps: ``round(r*T*N)`` plus its pass-through tokens. The processor's placeholder
    count and the model's embedding rows both come from here."""
    return exact_budget(frames, tokens_per_frame, config.retain_ratio) + pass_through


def merge_video(grid: torch.Tensor, config: HoliTomConfig, carried: torch.Tensor | None = None) -> OuterMergeResult:
    """``outer_merge`` of a ``[T, N, E]`` frame grid, the code the passes insert, run eagerly (vLLM's embedding
    path is eager, and every request brings its own grid): ``tokens [M, E]``, each token's representative as
    its flat index ``t*N + n`` (``positions``), and ``carried [T, N, C]`` merged with the same weights (Qwen3-VL's
    deepstack features). Ranked by the feature-norm saliency (vLLM's vision towers do not expose their
    attention), said once per process."""
    global _said_saliency
    if not _said_saliency:
        log.info("HoliTom in vLLM ranks visual tokens by feature norm (the vision attention is not exposed)")
        _said_saliency = True
    out = outer_merge(grid, feature_saliency(grid), config, carried)
    expected = merged_video_tokens(grid.shape[0], grid.shape[1], 0, config)
    if out.tokens.shape[0] != expected:  # the scheduler allocated `expected` placeholders: never truncate
        raise RuntimeError(f"HoliTom merged a {tuple(grid.shape[:2])} video into {out.tokens.shape[0]} tokens, "
                           f"the prompt holds {expected} placeholders")
    return out


#: A pruning rate > 0 switches vLLM's M-RoPE recompute hook on; its value is read by nothing HoliTom runs (at
#: retain_ratio 1, 1 - r would be 0: the switch off, the position channels never stripped).
_SWITCH_ON_RATE = 1e-3
#: Largest integer up to which every integer is exact in a float dtype (the position channels are floats).
_EXACT_INTEGERS = {torch.bfloat16: 256, torch.float16: 2048}


def switch_on_position_recompute(multimodal_config, config: HoliTomConfig) -> None:
    """Turn on the runner's switch for ``recompute_mrope_positions`` (``video_pruning_rate``, which nothing
    else reads here: the plugin's processor and model replace EVS). Before the model's own ``__init__``
    where it reads the switch while building its layers (Qwen3-VL)."""
    if not multimodal_config.is_multimodal_pruning_enabled():
        multimodal_config.video_pruning_rate = max(1.0 - config.retain_ratio, _SWITCH_ON_RATE)


def check_exact_positions(largest: torch.Tensor, dtype: torch.dtype) -> None:
    """The position channels ride in the embedding dtype: a position it cannot hold exactly is an error,
    never a rounding."""
    if largest > _EXACT_INTEGERS.get(dtype, 2**24):
        raise ValueError(f"HoliTom: M-RoPE positions up to {int(largest)} are not exact in {dtype}; serve this "
                         "video in float32 or shorten it")

