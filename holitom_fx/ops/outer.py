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
from .clustering import dpc_knn_centres, pairwise_distance, rank_within_groups
from .segment import segment_sum
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

    if carried is not None and carried.shape[:2] != features.shape[:2]:
        raise ValueError(f"outer_merge: carried must be [T, N, C] = {tuple(features.shape[:2])} + [C], "
                         f"got {tuple(carried.shape)}")

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

    # Order of the output (step 10): frame, then static / dominant / contextual, then position; the
    # chosen tokens (centres and dominant ones) first. ``output_slot`` of a flat token: its place there.
    token_class = torch.where(representative, 0, torch.where(is_dominant, 1, 2))
    position = torch.arange(num_tokens, device=device)[None, :]
    order_key = frames[:, None] * (3 * num_tokens) + token_class * num_tokens + position

    # Clustering happens only in the frames that hold pool tokens. With D = 0 those are static
    # representatives, which sit in the first frame of a window of >= 2 frames: at most T // 2 frames,
    # taken first in time order (then other frames, whose pool is empty, as padding).
    if config.contextual_ratio > 0:
        pool_frame_count, holds_pool = num_frames, torch.ones_like(frames, dtype=torch.bool)
    else:
        pool_frame_count = num_frames // 2
        holds_pool = first_frame[:, 0] & (segmentation.window_end > segmentation.window_start)
    frame_key = torch.where(holds_pool, frames, num_frames + frames)
    frame_order = torch.sort(frame_key).indices
    pool_frames = frame_order[:pool_frame_count]
    frame_rank = torch.argsort(frame_order)  # a frame's row among the pool frames when < K
    pool_row = frame_rank.clamp(max=max(pool_frame_count - 1, 0))
    in_pool_frame = frame_rank < pool_frame_count
    # Every frame's window sum goes to its window's first frame's row (or a spare slot).
    window_slot = frame_rank[segmentation.window_start].clamp(max=pool_frame_count)
    window_length = (segmentation.window_end - segmentation.window_start + 1)[pool_frames]
    pool_representative = representative[pool_frames]

    def pool_units(values: torch.Tensor) -> torch.Tensor:
        """``[K, N, C]``: the pool frames' tokens, static representatives as their window's mean."""
        sums = segment_sum(values.reshape(num_frames, -1), window_slot, pool_frame_count + 1)
        means = sums[:pool_frame_count].view(pool_frame_count, num_tokens, values.shape[-1])
        means = means / window_length[:, None, None]
        return torch.where(pool_representative[..., None], means, values[pool_frames])

    units = pool_units(x)
    is_centre = torch.zeros_like(in_pool)
    target = position.expand(num_frames, -1)
    if pool_frame_count > 0:
        pool_centre, pool_target = dpc_knn_centres(
            pairwise_distance(units), group[pool_frames], in_pool[pool_frames], clusters[pool_frames],
            config.knn, num_groups)
        is_centre = in_pool_frame[:, None] & pool_centre[pool_row]
        target = torch.where(in_pool_frame[:, None], pool_target[pool_row], target)

    order_key = torch.where(is_dominant | is_centre, order_key, 3 * grid + order_key).flatten()
    order = torch.sort(order_key).indices
    chosen = order[:total]
    output_slot = torch.argsort(order).clamp(max=total)  # the unchosen share one spare slot

    # Spec step 9: a centre becomes beta * itself + (1 - beta) * the mean of its members.
    pool_member = (in_pool & ~is_centre)[pool_frames]
    member_slot = torch.where(
        pool_member, output_slot[pool_frames[:, None] * num_tokens + target[pool_frames]], total).flatten()
    members = torch.zeros(total + 1, dtype=torch.long, device=device).scatter_add(
        0, member_slot, torch.ones_like(member_slot))[:total, None]
    chosen_frame, chosen_position = chosen // num_tokens, chosen % num_tokens
    chosen_row = pool_row[chosen_frame] * num_tokens + chosen_position
    chosen_in_pool = in_pool_frame[chosen_frame]  # its unit is in ``units`` (a window mean, or itself)

    def merged_tokens(values: torch.Tensor, values_units: torch.Tensor) -> torch.Tensor:
        """``[M, C]`` output tokens: each chosen token, its members folded in."""
        flat_units = values_units.reshape(pool_frame_count * num_tokens, values.shape[-1])
        base = values.reshape(grid, -1)[chosen]
        if pool_frame_count > 0:
            base = torch.where(chosen_in_pool[:, None], flat_units[chosen_row], base)
        member_sum = segment_sum(flat_units, member_slot, total + 1)[:total]
        folded = config.beta * base + (1.0 - config.beta) * member_sum / members.clamp(min=1)
        return torch.where(members > 0, folded, base)

    tokens = merged_tokens(x, units).to(features.dtype)
    kept_carried = None
    if carried is not None:  # the same weights, applied apart so the tokens stay bit-identical
        carried_values = carried.float()
        kept_carried = merged_tokens(carried_values, pool_units(carried_values)).to(carried.dtype)
    return OuterMergeResult(tokens=tokens, positions=chosen, segmentation=segmentation, carried=kept_carried)
