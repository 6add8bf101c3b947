"""Spec step 8 vectorized over groups: ranking and DPC-KNN (``outer.py`` folds the clusters, step 9).

Tokens are laid out ``[T, N]``; a *group* is a set of tokens clustered together
(the static tokens of a segment, or the dynamic tokens of one frame). Every group
lives inside one frame, so pairwise distances are computed frame by frame
(``[T, N, N]``) and masked to pairs of the same group: no loop over groups or clusters.
Ties are deterministic: the lower token index wins everywhere.
"""

from __future__ import annotations

import torch


def rank_within_groups(group: torch.Tensor, key: torch.Tensor, num_groups: int) -> torch.Tensor:
    """0-based rank of each element by ``key`` descending inside its group (ties: lower index first).

    ``group`` and ``key`` are 1-D of equal length, group ids in ``[0, num_groups)``.
    """
    by_key = torch.sort(key, descending=True, stable=True).indices
    order = by_key[torch.sort(group[by_key], stable=True).indices]
    sizes = torch.zeros(num_groups, dtype=torch.long, device=group.device)
    sizes = sizes.scatter_add(0, group, torch.ones_like(group))
    group_start = sizes.cumsum(0) - sizes
    place = torch.arange(group.numel(), device=group.device)
    rank_in_order = place - group_start[group[order]]
    # Back to element order through the inverse permutation: a gather, not a scatter (Inductor's CPU
    # backend fused a scatter into empty_like with its readers and returned wrong ranks, torch 2.13).
    return rank_in_order.gather(0, torch.argsort(order))


def pairwise_distance(units: torch.Tensor) -> torch.Tensor:
    """``d(i, j) = ||x_i - x_j|| / sqrt(E)`` per frame, ``[T, N, E] -> [T, N, N]`` in fp32, zero diagonal."""
    x = units.float()
    sq = (x * x).sum(-1)
    d2 = (sq[:, :, None] + sq[:, None, :] - 2.0 * x @ x.transpose(1, 2)).clamp(min=0.0)
    eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
    return torch.where(eye, 0.0, d2.sqrt()) / (x.shape[-1] ** 0.5)


def dpc_knn_centres(
    distance: torch.Tensor,
    group: torch.Tensor,
    in_pool: torch.Tensor,
    clusters: torch.Tensor,
    knn: int,
    num_groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DPC-KNN inside each group; returns ``(is_centre[T, N], target[T, N])``.

    Args:
        distance: ``[T, N, N]`` pairwise distances of the tokens of each frame.
        group: LongTensor[T, N] group id of each token (groups never span frames).
        in_pool: BoolTensor[T, N], tokens that take part in clustering.
        clusters: LongTensor[T, N], the cluster count ``c`` of each token's group.
        knn: neighbours for the density, capped at ``c`` per group.

    ``rho_i = exp(-mean d^2 over the knn nearest, self included)``; ``j`` is denser than
    ``i`` when ``rho_j > rho_i`` or equal with ``j < i``; ``delta_i`` = distance to the nearest
    denser token (the largest distance in the group if none); centres = top-c by
    ``rho * delta``. ``target`` is the index in the frame of each pool token's nearest centre
    (a centre is its own target); tokens outside the pool get themselves.
    """
    num_frames, num_tokens = group.shape
    same = (group[:, :, None] == group[:, None, :]) & in_pool[:, :, None] & in_pool[:, None, :]
    inf = torch.tensor(float("inf"), device=distance.device)

    k_eff = clusters.clamp(max=knn, min=1)
    k_max = min(knn, num_tokens)
    nearest = torch.where(same, distance, inf).topk(k_max, dim=-1, largest=False).values
    column = torch.arange(k_max, device=distance.device)
    near_sq = torch.where(column < k_eff[..., None], nearest.square(), 0.0)
    near_sq = torch.where(torch.isfinite(near_sq), near_sq, 0.0)
    density = torch.exp(-near_sq.sum(-1) / k_eff)

    index = torch.arange(num_tokens, device=distance.device)
    denser = (density[:, None, :] > density[:, :, None]) | (
        (density[:, None, :] == density[:, :, None]) & (index[None, :] < index[:, None]))
    delta = torch.where(same & denser, distance, inf).amin(-1)
    row_max = torch.where(same, distance, -inf).amax(-1)
    group_max = torch.where(same, row_max[:, None, :], -inf).amax(-1)
    delta = torch.where(torch.isfinite(delta), delta, group_max)
    score = density * delta

    # Rank only pool tokens; everything else is parked in a group of its own.
    flat_group = torch.where(in_pool, group, num_groups).flatten()
    score_rank = rank_within_groups(flat_group, score.flatten(), num_groups + 1).view(num_frames, num_tokens)
    is_centre = in_pool & (score_rank < clusters)

    to_centre = torch.where(same & is_centre[:, None, :], distance, inf)
    nearest_centre = to_centre.argmin(-1)
    has_centre = torch.isfinite(to_centre.amin(-1))
    keep_self = is_centre | ~in_pool | ~has_centre
    target = torch.where(keep_self, index[None, :].expand(num_frames, -1), nearest_centre)
    return is_centre, target

