"""Outer-LLM merging (spec steps 1-10) as one vectorized function.

Each frame-grid token (t, n) is one of:

* *dynamic*: not static in its window; grouped per frame (group ``2t + 1``);
* *static representative*: static, ``t`` is its window's first frame; carries the
  window mean of position n and is grouped per segment (group ``2s``);
* *absorbed*: static in a later frame of the window; folded into the mean (group ``2T``).

Each group g keeps ``k_g`` tokens: ``a_g`` dominant ones (saliency top-``a_g``) and
``c_g`` DPC-KNN cluster centres over the rest. Group ids follow the output order,
so ties in the budget rule go to the token that comes first in the output.

Budgets, with ``q_g = n_g * r'`` and ``r' = min(r*T*N / (T*N - R), 1)`` (spec step 4):

* ``"reference"``: ``k_g = ceil(q_g)`` for a frame's dynamic tokens, ``round(q_g)``
  (half to even) for a segment's static tokens; the total is data-dependent.
* ``"exact"``: exactly ``M = round(r*T*N)`` tokens, apportioned by largest remainder
  (Hamilton): every group gets ``floor(q_g)``, the remaining seats go to the largest
  fractional parts ``q_g - floor(q_g)``, ties to the lower group id. When the window
  means alone cannot fill M (``T*N - R < M``, e.g. r = 1 with temporal merging),
  the missing seats restore absorbed tokens as themselves, highest saliency first.

In both, dynamic groups split ``a_g = round(k_g * (1 - D))``, ``c_g = k_g - a_g``;
static groups have ``a_g = 0``. Dominant ranking and every other tie: lower index wins.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import HoliTomConfig
from .checks import values_checkable
from .clustering import dpc_knn_centres, merge_into_centres, pairwise_distance, rank_within_groups
from .segmentation import Segmentation, frame_similarity, segment_frames, static_token_mask


@dataclass
class OuterMergeResult:
    """Merged visual tokens of one video.

    Attributes:
        tokens: ``[M, E]`` in the input dtype, in the reference output order (spec step 10).
        positions: LongTensor[M], flat index ``t*N + n`` of each token's representative
            (the cluster centre, or for a static token the first frame of its window).
        segmentation: the temporal windows (static shapes); ``segments`` lists them.
        carried: ``[M, C]``: the ``carried`` features merged with the very weights of ``tokens``
            (None when none were given).
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    segmentation: Segmentation
    carried: torch.Tensor | None = None

    @property
    def segments(self) -> torch.Tensor:
        return self.segmentation.segments


def exact_budget(num_frames: int, num_tokens: int, retain_ratio: float) -> int:
    """Tokens the exact budget keeps for a ``T x N`` grid: ``round(r * T * N)``."""
    return round(retain_ratio * num_frames * num_tokens)


def _check_inputs(features: torch.Tensor, saliency: torch.Tensor) -> None:
    if features.dim() != 3:
        raise ValueError(f"outer_merge: features must be [T, N, E], got shape {tuple(features.shape)}")
    if min(features.shape) < 1:
        raise ValueError(f"outer_merge: empty frame grid, features shape {tuple(features.shape)}")
    if not features.is_floating_point():
        raise ValueError(f"outer_merge: features must be floating point, got {features.dtype}")
    if saliency.shape != features.shape[:2]:
        raise ValueError(
            f"outer_merge: saliency must be [T, N] = {tuple(features.shape[:2])}, got {tuple(saliency.shape)}")
    if values_checkable(features, saliency):  # a data check would be a host sync inside a graph
        if not (torch.isfinite(features).all() and torch.isfinite(saliency).all()):
            raise ValueError("outer_merge: features and saliency must be finite (found NaN or inf)")


def _apportion_exact(group: torch.Tensor, rank: torch.Tensor, quota: torch.Tensor, absorbed_group: int,
                     total: int, num_groups: int) -> torch.Tensor:
    """Largest-remainder seats per group, summing to ``total`` (see module docstring).

    Seat j (1-based, ``rank + 1``) of group g has key ``j - q_g``; the ``total`` smallest
    keys win, ties to the lower group. Absorbed tokens come after every other seat.
    """
    seat = (rank + 1).double()
    key = seat - quota[group]
    key = torch.where(group == absorbed_group, 2.0 * group.numel() + seat, key)
    by_group = torch.sort(group, stable=True).indices
    order = by_group[torch.sort(key[by_group], stable=True).indices]
    chosen = (torch.argsort(order) < total).long()  # the first ``total`` of the order (no scatter: see clustering)
    return torch.zeros(num_groups, dtype=torch.long, device=group.device).scatter_add(0, group, chosen)


def outer_merge(features: torch.Tensor, saliency: torch.Tensor, config: HoliTomConfig,
                carried: torch.Tensor | None = None) -> OuterMergeResult:
    """Merge the ``[T, N, E]`` frame-grid features of one video (spec steps 1-10).

    ``saliency[T, N]`` ranks dynamic tokens (attention received in the vision encoder).
    ``carried[T, N, C]``: other per-token features that must follow the merge without steering
    it (Qwen3-VL's deepstack features): window means and cluster merges use the same weights.
    Runs under ``torch.compile(fullgraph=True)`` with ``budget="exact"``; the reference
    budget's output size depends on the data and is computed eagerly (one sync).
    Raises ``ValueError`` on bad shapes, an empty grid, or (eagerly) non-finite input;
    inside a compiled graph non-finite input is not checked and gives unspecified tokens.
    """
    _check_inputs(features, saliency)
    num_frames, num_tokens, dim = features.shape
    device = features.device
    x = features.float()

    similarity = frame_similarity(x)
    segmentation = segment_frames(similarity, config.tau, config.max_window)
    static = static_token_mask(similarity, config.tau, segmentation)
    frames = torch.arange(num_frames, device=device)
    first_frame = (frames == segmentation.window_start)[:, None]
    representative = static & first_frame
    absorbed = static & ~first_frame

    same_window = segmentation.segment_id[:, None] == segmentation.segment_id[None, :]
    averaging = same_window.to(x.dtype) / same_window.sum(1, keepdim=True)  # [T, T]: window mean
    if carried is not None and carried.shape[:2] != features.shape[:2]:
        raise ValueError(f"outer_merge: carried must be [T, N, C] = {tuple(features.shape[:2])} + [C], "
                         f"got {tuple(carried.shape)}")

    def window_units(values: torch.Tensor) -> torch.Tensor:
        """Static representatives carry their window's mean, every other token itself."""
        window_mean = (averaging @ values.reshape(num_frames, -1)).view_as(values)
        return torch.where(representative[..., None], window_mean, values)

    units = window_units(x)

    absorbed_group = 2 * num_frames
    num_groups = absorbed_group + 1
    group = torch.where(absorbed, absorbed_group, 2 * frames[:, None] + (~static).long())
    flat_group = group.flatten()
    sizes = torch.zeros(num_groups, dtype=torch.long, device=device)
    sizes = sizes.scatter_add(0, flat_group, torch.ones_like(flat_group))
    grid = num_frames * num_tokens
    scale = (config.retain_ratio * num_frames * num_tokens / (grid - segmentation.removed).double()).clamp(max=1.0)
    quota = sizes.double() * scale
    rank = rank_within_groups(flat_group, saliency.flatten().float(), num_groups)

    group_ids = torch.arange(num_groups, device=device)
    is_dynamic_group = (group_ids % 2 == 1) & (group_ids < absorbed_group)
    if config.budget == "reference":
        kept = torch.where(is_dynamic_group, quota.ceil(), quota.round()).long()
        kept = torch.where(group_ids == absorbed_group, 0, kept)
        total = int(kept.sum())
    else:
        total = exact_budget(num_frames, num_tokens, config.retain_ratio)
        kept = _apportion_exact(flat_group, rank, quota, absorbed_group, total, num_groups)

    dominant = torch.where(is_dynamic_group, (kept.double() * (1.0 - config.contextual_ratio)).round().long(), 0)
    dominant = torch.where(group_ids == absorbed_group, kept, dominant)
    clusters = (kept - dominant)[group]
    is_dominant = rank.view(num_frames, num_tokens) < dominant[group]
    in_pool = ~absorbed & ~is_dominant & (clusters > 0)

    is_centre, target = dpc_knn_centres(
        pairwise_distance(units), group, in_pool, clusters, config.knn, num_groups)
    merged = merge_into_centres(units, in_pool & ~is_centre, target, config.beta)

    # Output order (step 10): frame, then static / dominant / contextual, then position.
    token_class = torch.where(representative, 0, torch.where(is_dominant, 1, 2))
    position = torch.arange(num_tokens, device=device)[None, :]
    order_key = frames[:, None] * (3 * num_tokens) + token_class * num_tokens + position
    order_key = torch.where(is_dominant | is_centre, order_key, 3 * grid + order_key).flatten()
    chosen = torch.sort(order_key).indices[:total]
    tokens = merged.reshape(grid, dim)[chosen].to(features.dtype)
    kept_carried = None
    if carried is not None:  # the same weights, applied apart so the tokens stay bit-identical
        carried_merged = merge_into_centres(window_units(carried.float()), in_pool & ~is_centre, target, config.beta)
        kept_carried = carried_merged.reshape(grid, -1)[chosen].to(carried.dtype)
    return OuterMergeResult(tokens=tokens, positions=chosen, segmentation=segmentation, carried=kept_carried)
