"""Per-architecture knowledge as data: how a model lays out its video tokens.

A record names the model types it covers and answers, from the model config only:
which token id marks video placeholders, how many tokens one frame contributes
after the projector and pooling, how many pass-through tokens (newline, separators)
follow the frame grid of each video, and where the saliency comes from (the vision
tower, the encoder layer feeding the projector, how patches pool to the frame grid).
The passes never branch on the architecture: they read these records. A model without one
gets ``GENERIC`` when its config names a video token: the frame grid is then read off the graph
(the per-frame features before they are flattened into the sequence) and the saliency grid off
the encoder's patch count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class SaliencyGrid:
    """How per-patch saliency of one frame maps to its frame-grid tokens (``ops.pool_saliency``)."""

    drop_leading: int  # non-patch tokens before the patches (a CLS token)
    side: int  # patches per side
    pooled_side: int  # frame-grid tokens per side after the model's pooling
    mode: str = "bilinear"  # how the model pools: "bilinear" resize, or "average" / "max" with a stride


@dataclass(frozen=True)
class VideoLayout:
    """Where a video's tokens come from, for one family of models."""

    model_types: tuple[str, ...]
    tokens_per_frame: Callable[[Any], int] | None  # None: read off the graph
    pass_through_tokens: int | None = 0  # None: whatever follows the frame grid in the video's span
    video_token_attrs: tuple[str, ...] = ("video_token_id", "video_token_index")
    vision_tower: str = "model.vision_tower"  # submodule path, compiled by holitom_fx.compile ("" for none)
    # encoder layer feeding the projector (None: the last encoder layer in the graph)
    saliency_layer: Callable[[Any], int | None] = lambda config: None
    saliency_grid: Callable[[Any], SaliencyGrid] | None = None  # None: inferred, see infer_saliency_grid
    # The three below: None reads them off the graph (GENERIC).
    # 3: M-RoPE, position ids [3 or 4 (a text row first), B, L] holding each token's (t, h, w). A video's
    # frames are then read from the prompt's positions (``passes/frame_grid.py``), and every merged token
    # keeps its representative's (t, h, w) (the spec's rule). None: 3 when the graph takes such positions.
    rotary_axes: int | None = 1
    # Each frame of a video is a placeholder span of its own (Qwen3-VL: a timestamp before each frame): all
    # video spans of a row are then one video, and each merged token goes to its representative's frame.
    # None: when every span of an M-RoPE row holds a single frame.
    frame_spans: bool | None = False
    # The decoder re-adds per-video-token features at the visual positions (Qwen3-VL's deepstack): tensors
    # with one row per video token read after the boundary are merged with the features' own weights.
    # None: looked for in M-RoPE models.
    carries_visual_features: bool | None = False

    def video_token_id(self, config: Any) -> int | None:
        for attr in self.video_token_attrs:
            value = getattr(config, attr, None)
            if isinstance(value, int):
                return value
        return None


def _patch_side(config: Any) -> int:
    return config.vision_config.image_size // config.vision_config.patch_size


def _pooled_patch_grid(config: Any) -> int:
    """LLaVA-OneVision: patch grid of the vision tower, bilinear-pooled 2x (27x27 -> 14x14)."""
    return math.ceil(_patch_side(config) / 2) ** 2


def _selected_hidden_state_layer(config: Any) -> int | None:
    """Encoder layer whose output is ``hidden_states[vision_feature_layer]`` (entry 0 is the embeddings)."""
    index = config.vision_feature_layer
    if not isinstance(index, int):  # several layers concatenated: no single attention to read
        return None
    layer = index % (config.vision_config.num_hidden_layers + 1) - 1
    return layer if layer >= 0 else None


def _llava_onevision_saliency_grid(config: Any) -> SaliencyGrid:
    side = _patch_side(config)
    return SaliencyGrid(drop_leading=1 if config.vision_feature_select_strategy == "default" else 0,
                        side=side, pooled_side=math.ceil(side / 2))


def _llava_next_video_saliency_grid(config: Any) -> SaliencyGrid:
    """LLaVA-NeXT-Video pools features with a stride (``spatial_pool_mode``; a learned ``"conv"`` pool
    has no saliency analogue and is read as average pooling)."""
    side = _patch_side(config)
    mode = config.spatial_pool_mode if config.spatial_pool_mode in ("average", "max") else "average"
    return SaliencyGrid(drop_leading=1 if config.vision_feature_select_strategy == "default" else 0,
                        side=side, pooled_side=side // config.spatial_pool_stride, mode=mode)


def _strided_patch_grid(config: Any) -> int:
    """LLaVA-NeXT-Video: patch grid pooled with ``spatial_pool_stride`` (24x24 -> 12x12)."""
    return (_patch_side(config) // config.spatial_pool_stride) ** 2


LAYOUTS: tuple[VideoLayout, ...] = (
    VideoLayout(model_types=("llava_onevision",), tokens_per_frame=_pooled_patch_grid, pass_through_tokens=1,
                saliency_layer=_selected_hidden_state_layer, saliency_grid=_llava_onevision_saliency_grid),
    # Qwen2-VL / Qwen2.5-VL: features flat [sum(t*h*w/4), E], two frames per temporal patch. The encoder's
    # attention runs per frame or window through cu_seqlens splits that break its graph, so no saliency
    # is read there: the feature-norm fallback ranks dynamic tokens (vision_tower="" compiles nothing apart).
    VideoLayout(model_types=("qwen2_vl", "qwen2_5_vl"), tokens_per_frame=None, pass_through_tokens=0,
                video_token_attrs=("video_token_id",), vision_tower="", rotary_axes=3),
    # Qwen3-VL family: as Qwen2-VL, with a timestamp before each frame's span and deepstack features added
    # to the first decoder layers' visual positions (Qwen3.5 has none: nothing is carried then).
    VideoLayout(model_types=("qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"), tokens_per_frame=None, pass_through_tokens=0,
                video_token_attrs=("video_token_id",), vision_tower="", rotary_axes=3, frame_spans=True,
                carries_visual_features=True),
    VideoLayout(model_types=("llava_next_video",), tokens_per_frame=_strided_patch_grid, pass_through_tokens=0,
                saliency_layer=_selected_hidden_state_layer, saliency_grid=_llava_next_video_saliency_grid),
)


#: Any other model whose config names a video token.
GENERIC = VideoLayout(model_types=(), tokens_per_frame=None, pass_through_tokens=None, vision_tower="",
                      rotary_axes=None, frame_spans=None, carries_visual_features=None)


def layout_for(config: Any) -> VideoLayout | None:
    """The record covering ``config.model_type``; ``GENERIC`` for another model whose config names a
    video token; None when there is no config or no video token to anchor on."""
    if config is None:
        return None
    model_type = getattr(config, "model_type", None)
    record = next((layout for layout in LAYOUTS if model_type in layout.model_types), None)
    return record or (GENERIC if GENERIC.video_token_id(config) is not None else None)


def infer_saliency_grid(patches: int, tokens: int) -> SaliencyGrid | None:
    """Pooling from ``patches`` encoder tokens per frame (a square, maybe after one CLS token) to
    ``tokens`` frame-grid tokens (a square): average pooling for an integer stride, else bilinear."""
    for drop in (0, 1):
        side = math.isqrt(max(patches - drop, 0))
        if side and side * side == patches - drop:
            break
    else:
        return None
    pooled = math.isqrt(tokens)
    if pooled * pooled != tokens or not 0 < pooled <= side:
        return None
    return SaliencyGrid(drop_leading=drop, side=side, pooled_side=pooled,
                        mode="average" if side % pooled == 0 else "bilinear")


#: Config attributes naming a vision encoder's spatial merge (m, or (m_h, m_w)): m x m patches become one token.
SPATIAL_MERGE_ATTRS = ("spatial_merge_size", "merge_kernel_size", "merge_size")


def spatial_merge(config: Any) -> tuple[int, int] | None:
    """The video encoder's spatial merge ``(m_h, m_w)`` from the model config (its vision config first), or
    None when it names none: with the grid (t, h, w) the encoder was called with, a frame is (h/m_h)*(w/m_w)
    tokens."""
    for owner in (getattr(config, "vision_config", None), config):
        for attr in SPATIAL_MERGE_ATTRS:
            value = getattr(owner, attr, None) if owner is not None else None
            if isinstance(value, int) and value > 0:
                return value, value
            if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value):
                return tuple(value)
    return None
