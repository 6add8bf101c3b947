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
from .sequence import last_query_attention, splice_span


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge each row's video span of ``embeds[B, L, E]`` (already scattered) into ``M + P`` tokens.

    ``features`` (``B*V`` rows of ``E``) are the scattered visual features, ``V = frames*tokens_per_frame +
    pass_through`` per row, its trailing ``pass_through`` tokens kept as they are.
    ``config_fields`` are the ``HoliTomConfig`` field values in order (graph arguments must be
    literals). Returns ``(embeds[B, L', E], source[B, L'], span_start[B], window_end[B, T])``:
    ``source`` is the original index each token stands for; ``window_end`` encodes the segments.
    ``saliency[B*T, N]`` ranks dynamic tokens (vision attention received); without it, or where
    the bool tensor ``saliency_valid`` is false, the feature-norm fallback ranks them.
    """
    config = HoliTomConfig(*config_fields)
    batch = embeds.shape[0]
    grid_tokens = frames * tokens_per_frame
    span = grid_tokens + pass_through
    mask = video_mask.reshape(batch, embeds.shape[1], -1).any(-1)  # [B, L] from [B, L], [B, L, 1] or [B, L, E]
    span_start = mask.to(torch.int32).argmax(1).long()  # first video token of each row
    per_row = features.reshape(batch, span, -1)
    per_row_saliency = saliency.reshape(batch, frames, tokens_per_frame) if saliency is not None else None
    merged, merged_source, window_end = [], [], []
    for row in range(batch):  # batch rows only: a handful, unrolled when traced
        grid = per_row[row, :grid_tokens].reshape(frames, tokens_per_frame, -1)
        row_saliency = feature_saliency(grid)
        if per_row_saliency is not None:
            row_saliency = per_row_saliency[row].float() if saliency_valid is None else torch.where(
                saliency_valid, per_row_saliency[row].float(), row_saliency)
        out = outer_merge(grid, row_saliency, config)
        passed = torch.arange(grid_tokens, span, device=embeds.device)
        merged.append(torch.cat([out.tokens, per_row[row, grid_tokens:]]))
        merged_source.append(torch.cat([out.positions, passed]))
        window_end.append(out.segmentation.window_end)
    spliced, source = splice_span(embeds, span_start, span, torch.stack(merged), torch.stack(merged_source))
    return spliced, source, span_start, torch.stack(window_end)


def inner_stage(
    hidden: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    span_start: torch.Tensor,
    span_length: int,
    ratio: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inner merge at layer K from layer K-1's q/k: returns ``(hidden[B, L'', E], keep[B, L''])``."""
    attention = last_query_attention(query, key, attn_mask, scale)
    if attention.shape[0] != hidden.shape[0]:
        attention = attention.expand(hidden.shape[0], -1)
    return inner_merge(hidden, attention, span_start, span_length, ratio)
