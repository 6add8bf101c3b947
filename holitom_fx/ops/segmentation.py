"""Spec steps 1-3: adjacent-frame similarity and the global DP segmentation.

Everything has static shapes: the segmentation is held per frame (``window_start`` /
``window_end`` of the window each frame belongs to) so it can live inside a compiled
graph; :attr:`Segmentation.segments` turns it into the ``[S, 2]`` list eagerly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def frame_similarity(features: torch.Tensor) -> torch.Tensor:
    """``S[t, n] = cos(X[t, n], X[t+1, n])`` for ``features[T, N, E]``; returns fp32 ``[T-1, N]``."""
    if features.dim() != 3:
        raise ValueError(f"features must be [T, N, E], got shape {tuple(features.shape)}")
    x = features.float()
    return F.cosine_similarity(x[:-1], x[1:], dim=-1)


@dataclass
class Segmentation:
    """Temporal windows of a video, one entry per frame (static shapes).

    Attributes:
        window_start: LongTensor[T], first frame of the window holding frame t.
        window_end: LongTensor[T], last frame of that window.
        segment_id: LongTensor[T], index of that window in time order.
        removed: 0-d LongTensor, tokens removed by temporal merging (the DP optimum R).
    """

    window_start: torch.Tensor
    window_end: torch.Tensor
    segment_id: torch.Tensor
    removed: torch.Tensor

    @property
    def segments(self) -> torch.Tensor:
        """LongTensor[S, 2] of inclusive ``(start, end)`` frame ranges in time order (eager: syncs)."""
        first = self.window_start == torch.arange(self.window_start.numel(), device=self.window_start.device)
        return torch.stack([self.window_start[first], self.window_end[first]], dim=1)


def _nonstatic_prefix(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """``F[i, n]`` = pairs t < i with ``S[t, n] <= tau`` (or NaN); LongTensor[T, N]."""
    nonstatic = ~(similarity > tau)
    zero = torch.zeros(1, nonstatic.shape[1], dtype=torch.long, device=nonstatic.device)
    return torch.cat([zero, nonstatic.long().cumsum(0)], dim=0)


def window_profit(similarity: torch.Tensor, tau: float, max_window: int) -> torch.Tensor:
    """``P[e, w-1] = |static(e-w+1, e)| * (w-1)`` for windows ending at e; LongTensor[T, W].

    Entries whose window would start before frame 0 are 0 and never read by the DP.
    """
    prefix = _nonstatic_prefix(similarity, tau)
    num_frames = prefix.shape[0]
    width = min(num_frames, max_window)
    ends = torch.arange(num_frames, device=prefix.device)
    lengths = torch.arange(width, device=prefix.device)
    starts = (ends[:, None] - lengths[None, :]).clamp(min=0)
    static = prefix[ends][:, None, :] == prefix[starts]
    return static.sum(-1) * lengths[None, :]


#: "No path" in the DP's (max, +) algebra: far below any profit sum, and its sum with itself stays an int32.
_NO_PATH = -(2**29)


def _max_plus_square(paths: torch.Tensor) -> torch.Tensor:
    """``out[a, c] = max_b paths[a, b] + paths[b, c]``: best paths of up to twice as many windows."""
    return (paths[:, :, None] + paths[None, :, :]).amax(1)


def segment_frames(similarity: torch.Tensor, tau: float, max_window: int) -> Segmentation:
    """Partition frames into windows of length <= ``max_window`` maximising removed tokens.

    ``dp[i] = max_{w=1..min(i+1, W)} dp[i-w] + P(i-w+1, i)`` with ``P`` of a one-frame window 0: the
    longest path over nodes 0..T (node j: frames before j done) whose edges j -> i+1 are the windows
    [j, i]. It is found without a loop over frames, so the traced graph does not grow with them:
    ``ceil(log2 T)`` (max, +) squarings of the ``[T+1, T+1]`` edge matrix (O(T^3 log T) integer work on a
    matrix of frames, no host sync), then each frame's best window from the ``dp`` values at once, and
    the optimal windows by pointer doubling from the last frame. Tie-break (the reference's): the
    candidate with the shortest window wins, so the single-frame option wins every tie.
    """
    if similarity.dim() != 2:
        raise ValueError(f"similarity must be [T-1, N], got shape {tuple(similarity.shape)}")
    if max_window < 1:
        raise ValueError(f"max_window must be >= 1, got {max_window}")
    num_frames = similarity.shape[0] + 1
    device = similarity.device
    profit = window_profit(similarity, tau, max_window).to(torch.int32)
    width = profit.shape[1]
    rounds = max(1, math.ceil(math.log2(num_frames)))

    # edges[j, e]: window [j, e-1] (length e - j, 1..width) with its profit; staying at a node costs 0.
    nodes = torch.arange(num_frames + 1, device=device)
    length = nodes[None, :] - nodes[:, None]
    window = profit[(nodes[None, :] - 1).clamp(min=0), (length - 1).clamp(0, width - 1)]
    paths = torch.where((length >= 1) & (length <= width), window, _NO_PATH)
    paths = torch.where(length == 0, 0, paths)
    for _ in range(rounds):  # log2 T squarings: every path of up to T windows
        paths = _max_plus_square(paths)
    dp_padded = paths[0]  # dp_padded[j] = dp[j - 1], dp[-1] = 0

    frames = torch.arange(num_frames, device=device)
    starts = frames[:, None] - torch.arange(width, device=device)[None, :]  # window [start, frame]
    candidates = torch.where(starts >= 0, dp_padded[starts.clamp(min=0)] + profit, _NO_PATH)
    window_length = candidates.argmax(1) + 1  # first maximum: shortest window

    # The optimal windows' ends: the frames reached from the last one by jumping back a window at a time
    # (node k = frame k - 1; node 0, before the first frame, ends the walk), 2^r jumps after r doublings.
    jump = torch.cat([nodes[:1], nodes[1:] - window_length])
    reached = nodes == num_frames
    for _ in range(rounds):
        reached = reached | (torch.zeros_like(nodes).index_add(0, jump, reached.long()) > 0)
        jump = jump[jump]
    is_end = reached[1:]

    is_start = torch.cat([torch.ones(1, dtype=torch.bool, device=device), is_end[:-1]])
    segment_id = is_start.long().cumsum(0) - 1
    seg_start = torch.full((num_frames,), num_frames, dtype=torch.long, device=device)
    seg_start = seg_start.scatter_reduce(0, segment_id, frames, reduce="amin")
    seg_end = torch.full((num_frames,), -1, dtype=torch.long, device=device)
    seg_end = seg_end.scatter_reduce(0, segment_id, frames, reduce="amax")
    return Segmentation(
        window_start=seg_start[segment_id],
        window_end=seg_end[segment_id],
        segment_id=segment_id,
        removed=dp_padded[-1].long(),
    )


def static_token_mask(similarity: torch.Tensor, tau: float, segmentation: Segmentation) -> torch.Tensor:
    """BoolTensor[T, N]: token (t, n) is static in its window (windows of one frame have none)."""
    prefix = _nonstatic_prefix(similarity, tau)
    start, end = segmentation.window_start, segmentation.window_end
    return (prefix[end] == prefix[start]) & (end > start)[:, None]
