"""Every graph-changing HoliTom setting, in one frozen, validated record.

Defaults follow the released configuration of the paper's 10 % row
(``../shared/HOLITOM_SPEC.md``): r = 0.10, tau = 0.65, beta = 0.6, D = 0,
knn = 7, max_window = 1024, inner merge at 18/28 of the depth with r = 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Union

#: The spec's inner layer K = 18 of 28, as a fraction of the decoder depth.
DEFAULT_INNER_FRACTION = 18 / 28

#: ``inner_layer`` value that switches the inner-LLM stage off.
INNER_OFF = "off"

InnerLayer = Union[int, None, Literal["off"]]


def _require(ok: bool, field: str, value: object, valid: str) -> None:
    if not ok:
        raise ValueError(f"HoliTomConfig.{field}={value!r} is invalid: expected {valid}")


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class HoliTomConfig:
    """HoliTom settings; a bad value raises ``ValueError`` naming field, value and range.

    Attributes:
        retain_ratio: fraction r of the T*N frame-grid tokens kept by the outer stage.
        tau: cosine-similarity threshold above which a token is static across frames
            (a value above 1 disables temporal merging).
        beta: weight of a cluster's centre in its merged token.
        contextual_ratio: the spec's D, share of kept dynamic tokens that are
            cluster (contextual) tokens instead of saliency top-k (dominant) ones.
        knn: neighbours for DPC-KNN density (capped at the cluster count).
        max_window: longest temporal window the segmentation may form.
        inner_layer: decoder layer K of the inner stage; ``None`` picks
            ``round(depth * 18/28)``; ``"off"`` disables the inner stage.
        inner_ratio: fraction of the visual tokens the inner stage folds away.
        budget: ``"exact"`` keeps exactly ``round(r*T*N)`` tokens (static shapes,
            compiles without syncs); ``"reference"`` reproduces the released per-segment
            counts (data-dependent size, eager only).
        positions: ``"compact"`` renumbers the merged sequence contiguously (reference);
            ``"original"`` keeps each kept token at its representative's original position.
        video_token_id: the placeholder id that marks video tokens, where the graph alone cannot tell the
            video's placement from an image's (``None``: read off the graph, see ``passes/boundary.py``).
    """

    retain_ratio: float = 0.10
    tau: float = 0.65
    beta: float = 0.6
    contextual_ratio: float = 0.0
    knn: int = 7
    max_window: int = 1024
    inner_layer: InnerLayer = None
    inner_ratio: float = 0.5
    budget: Literal["exact", "reference"] = "exact"
    positions: Literal["compact", "original"] = "compact"
    video_token_id: int | None = None

    def __post_init__(self) -> None:
        r = self.retain_ratio
        _require(_is_real(r) and 0.0 < r <= 1.0, "retain_ratio", r, "a real number in (0, 1]")
        _require(_is_real(self.tau) and self.tau >= -1.0, "tau", self.tau,
                 "a finite real number >= -1 (above 1 disables temporal merging)")
        _require(_is_real(self.beta) and 0.0 <= self.beta <= 1.0, "beta", self.beta, "a real number in [0, 1]")
        d = self.contextual_ratio
        _require(_is_real(d) and 0.0 <= d <= 1.0, "contextual_ratio", d, "a real number in [0, 1]")
        _require(_is_int(self.knn) and self.knn >= 1, "knn", self.knn, "an integer >= 1")
        _require(_is_int(self.max_window) and self.max_window >= 1, "max_window", self.max_window,
                 "an integer >= 1")
        k = self.inner_layer
        _require(k is None or k == INNER_OFF or (_is_int(k) and k >= 1), "inner_layer", k,
                 f"None, {INNER_OFF!r} or an integer >= 1")
        ir = self.inner_ratio
        _require(_is_real(ir) and 0.0 <= ir < 1.0, "inner_ratio", ir, "a real number in [0, 1)")
        _require(self.budget in ("exact", "reference"), "budget", self.budget, "'exact' or 'reference'")
        _require(self.positions in ("compact", "original"), "positions", self.positions,
                 "'compact' or 'original'")
        v = self.video_token_id
        _require(v is None or (_is_int(v) and v >= 0), "video_token_id", v, "None or an integer >= 0")

    @property
    def inner_enabled(self) -> bool:
        return self.inner_layer != INNER_OFF and self.inner_ratio > 0.0

    def resolve_inner_layer(self, num_layers: int) -> int | None:
        """Decoder layer K for a model of ``num_layers`` layers, or None when the stage is off.

        Raises ``ValueError`` when an explicit K leaves no layer before or after it.
        """
        if not self.inner_enabled:
            return None
        if self.inner_layer is None:
            return min(max(round(num_layers * DEFAULT_INNER_FRACTION), 1), num_layers - 1) if num_layers > 1 else None
        if not 1 <= self.inner_layer < num_layers:
            raise ValueError(
                f"HoliTomConfig.inner_layer={self.inner_layer} is invalid for a model with {num_layers} "
                f"decoder layers: expected 1 <= inner_layer < {num_layers}")
        return self.inner_layer
