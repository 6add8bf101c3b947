"""Per-architecture knowledge as data: how a model lays out its video tokens.

A record names the model types it covers and answers, from the model config only:
which token id marks video placeholders, how many tokens one frame contributes
after the projector and pooling, and how many pass-through tokens (newline,
separators) follow the frame grid of each video. The passes never branch on the
architecture: they read these records.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class VideoLayout:
    """Where a video's tokens come from, for one family of models."""

    model_types: tuple[str, ...]
    tokens_per_frame: Callable[[Any], int]
    pass_through_tokens: int = 0
    video_token_attrs: tuple[str, ...] = ("video_token_id", "video_token_index")

    def video_token_id(self, config: Any) -> int | None:
        for attr in self.video_token_attrs:
            value = getattr(config, attr, None)
            if isinstance(value, int):
                return value
        return None


def _pooled_patch_grid(config: Any) -> int:
    """LLaVA-OneVision: patch grid of the vision tower, bilinear-pooled 2x (27x27 -> 14x14)."""
    side = config.vision_config.image_size // config.vision_config.patch_size
    return math.ceil(side / 2) ** 2


LAYOUTS: tuple[VideoLayout, ...] = (
    VideoLayout(model_types=("llava_onevision",), tokens_per_frame=_pooled_patch_grid, pass_through_tokens=1),
)


def layout_for(config: Any) -> VideoLayout | None:
    """The record covering ``config.model_type``, or None for an architecture without one."""
    model_type = getattr(config, "model_type", None)
    return next((layout for layout in LAYOUTS if model_type in layout.model_types), None)
