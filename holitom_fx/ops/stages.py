"""The two HoliTom stages as the graph passes insert them: whole-batch, static-shape tensor code.

These are the call targets of the nodes the passes add; AOTAutograd traces through them,
so Inductor generates their kernels with the rest of the model's graph.
"""

from __future__ import annotations

import torch

from ..config import HoliTomConfig
from .inner import inner_merge
from .outer import outer_merge
from .saliency import feature_saliency
from .sequence import place_by_frame, splice_span


def outer_stage(
    embeds: torch.Tensor,
    video_mask: torch.Tensor,
    features: torch.Tensor,
    frames: int,
    tokens_per_frame: int,
    pass_through: int,
    config_fields: tuple,
    saliency: torch.Tensor | None = None,
    saliency_valid: torch.Tensor | None = None,
    videos: int = 1,
    frame_spans: bool = False,
    carried: tuple[torch.Tensor, ...] = (),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]:
    """Merge each of the ``videos`` video spans of every row of ``embeds[B, L, E]`` (already scattered)
    into ``M + P`` tokens, each video on its own.

    ``features`` (``B*videos*V`` rows of ``E``, in sequence order) are the scattered visual features,
    ``V = frames*tokens_per_frame + pass_through`` per video, its trailing ``pass_through`` tokens kept
    as they are. ``config_fields`` are the ``HoliTomConfig`` field values in order (graph arguments must
    be literals). ``frame_spans``: each frame is a span of its own (text between frames, one video per
    row); merged tokens go to their representative's frame (``place_by_frame``). ``carried``: other
    per-video-token tensors ``[B*videos*V, C]`` merged with the features' weights.

    Returns ``(embeds[B, L', E], source[B, L'], span_start[B, videos], window_end[B*videos, T], carried)``:
    ``source`` is the original index each token stands for, ``span_start`` where each merged video starts
    in the new sequence (with ``frame_spans``: the indices of all its ``M`` tokens, ``[B, M]``),
    ``window_end`` the segments, ``carried`` each carried tensor
    merged, ``[B*videos*(M + P), C]`` in sequence order. ``saliency[B*videos*T, N]`` ranks dynamic tokens
    (vision attention received); without it, or where the bool tensor ``saliency_valid`` is false, the
    feature-norm fallback ranks them.
    """
    config = HoliTomConfig(*config_fields)
    batch, length = embeds.shape[:2]
    grid_tokens = frames * tokens_per_frame
    span = grid_tokens + pass_through
    mask = video_mask.reshape(batch, length, -1).any(-1)  # [B, L] from [B, L], [B, L, 1] or [B, L, E]
    clips = features.reshape(batch * videos, span, -1)
    carried_clips = torch.cat([c.reshape(batch * videos, span, -1) for c in carried], -1) if carried else None
    clip_saliency = saliency.reshape(batch * videos, frames, tokens_per_frame) if saliency is not None else None
    merged, merged_source, merged_carried, window_end = [], [], [], []
    for clip in range(batch * videos):  # rows x videos: a handful, unrolled when traced
        grid = clips[clip, :grid_tokens].reshape(frames, tokens_per_frame, -1)
        ranking = feature_saliency(grid)
        if clip_saliency is not None:
            ranking = clip_saliency[clip].float() if saliency_valid is None else torch.where(
                saliency_valid, clip_saliency[clip].float(), ranking)
        carried_grid = None if carried_clips is None else \
            carried_clips[clip, :grid_tokens].reshape(frames, tokens_per_frame, -1)
        out = outer_merge(grid, ranking, config, carried=carried_grid)
        passed = torch.arange(grid_tokens, span, device=embeds.device)
        merged.append(torch.cat([out.tokens, clips[clip, grid_tokens:]]))
        merged_source.append(torch.cat([out.positions, passed]))
        if carried_clips is not None:
            merged_carried.append(torch.cat([out.carried, carried_clips[clip, grid_tokens:]]))
        window_end.append(out.segmentation.window_end)
    merged = torch.stack(merged).unflatten(0, (batch, videos))
    merged_source = torch.stack(merged_source).unflatten(0, (batch, videos))
    if frame_spans:
        if videos != 1 or pass_through:
            raise ValueError("frame_spans: one video per row, no pass-through tokens")
        spliced, source = place_by_frame(embeds, mask, merged[:, 0], merged_source[:, 0], frames, tokens_per_frame)
        merged_mask = mask.gather(1, source)  # the merged video's tokens, in their frames' spans
        new_starts = torch.sort((~merged_mask).to(torch.int8), dim=1, stable=True).indices[:, :merged.shape[2]]
    else:
        first_of_each = torch.arange(videos, device=embeds.device) * span + 1  # video j starts at count j*V + 1
        starts = (mask.long().cumsum(1)[:, :, None] == first_of_each).to(torch.int32).argmax(1).long()  # [B, videos]
        spliced, source = embeds, torch.arange(length, device=embeds.device).expand(batch, length)
        for video in reversed(range(videos)):  # the last first: earlier spans keep their starts
            spliced, step = splice_span(spliced, starts[:, video], span, merged[:, video], merged_source[:, video])
            source = source.gather(1, step)
        new_starts = starts - torch.arange(videos, device=embeds.device) * (span - merged.shape[2])
    carried_out = ()
    if merged_carried:
        flat = torch.stack(merged_carried).flatten(0, 1)
        carried_out = tuple(flat.split([c.shape[-1] for c in carried], -1))
    return spliced, source, new_starts, torch.stack(window_end), carried_out


def inner_stage(
    hidden: torch.Tensor,
    attention: torch.Tensor,
    span_start: torch.Tensor,
    span_length: int,
    ratio: float,
    frame_spans: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner merge at layer K from layer K-1's last-query attention ``[B or 1, L]`` (``last_query_attention``
    of its q/k, or ``last_query_probabilities`` of its own softmax), on each visual span
    ``[span_start[b, j], +span_length)`` on its own, or with ``frame_spans`` on the video tokens
    ``span_start[B, V]`` (indices) wherever they lie: returns ``(hidden[B, L'', E], keep[B, L''])``."""
    if attention.shape[0] != hidden.shape[0]:
        attention = attention.expand(hidden.shape[0], -1)
    if frame_spans:
        return inner_merge(hidden, attention, span_start[:, 0], span_length, ratio, visual=span_start)
    keep = torch.arange(hidden.shape[1], device=hidden.device).expand(hidden.shape[0], -1)
    for video in reversed(range(span_start.shape[1])):  # the last first: earlier spans keep their starts
        hidden, kept = inner_merge(hidden, attention, span_start[:, video], span_length, ratio)
        attention, keep = attention.gather(1, kept), keep.gather(1, kept)
    return hidden, keep
