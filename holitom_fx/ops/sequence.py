"""Splicing merged visual tokens into a token sequence, and the attention the inner stage needs."""

from __future__ import annotations

import torch


def place_by_frame(
    embeds: torch.Tensor,
    mask: torch.Tensor,
    merged: torch.Tensor,
    merged_source: torch.Tensor,
    frames: int,
    tokens_per_frame: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the ``V = frames * tokens_per_frame`` video tokens of each row, wherever they lie, by
    ``merged[b]``: each merged token goes where its representative's frame starts, in ``merged`` order
    within a frame (static shapes, no sync).

    For videos whose frames are spans of their own (Qwen3-VL puts a timestamp before each frame):
    the merged tokens of a frame stay inside that frame's span. On one contiguous span it places
    exactly as ``splice_span``.

    Args:
        embeds: ``[B, L, E]`` sequence; ``mask [B, L]`` marks its V video tokens per row.
        merged: ``[B, K, E]``, frame-major (a frame's tokens after an earlier frame's).
        merged_source: LongTensor[B, K], grid index ``t*N + n`` (the ``t*N + n``-th video token).

    Returns ``(placed[B, L - V + K, E], source[B, L - V + K])`` as ``splice_span``.
    """
    batch, length, dim = embeds.shape
    kept, video_tokens = merged.shape[1], frames * tokens_per_frame
    # Video token indices first, then the text's, each in sequence order (a stable sort).
    order = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices
    video, text = order[:, :video_tokens], order[:, video_tokens:]
    frame_start = video.gather(1, merged_source // tokens_per_frame * tokens_per_frame)
    # Text keeps its index; a merged token sorts at its frame's start, after the text before it.
    rank = torch.arange(1, kept + 1, device=embeds.device).expand(batch, kept)
    keys = torch.cat([text * (kept + 1), frame_start * (kept + 1) + rank], 1)
    placement = torch.sort(keys, dim=1).indices
    values = torch.cat([embeds.gather(1, text[..., None].expand(-1, -1, dim)), merged], 1)
    placed = values.gather(1, placement[..., None].expand(-1, -1, dim))
    source = torch.cat([text, video.gather(1, merged_source)], 1).gather(1, placement)
    return placed, source


def splice_span(
    embeds: torch.Tensor,
    span_start: torch.Tensor,
    span_length: int,
    merged: torch.Tensor,
    merged_source: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the span ``[start_b, start_b + V)`` of each row by ``merged[b]`` (static shapes).

    Args:
        embeds: ``[B, L, E]`` sequence.
        span_start: LongTensor[B], first token of the span per row (left padding moves it).
        span_length: V, span tokens per row.
        merged: ``[B, K, E]`` tokens that replace the span.
        merged_source: LongTensor[B, K], offset in the span (0..V-1) each merged token stands for.

    Returns ``(spliced[B, L - V + K, E], source[B, L - V + K])``, ``source`` holding the original
    sequence index each token stands for (gather positions with it).
    """
    batch, length, dim = embeds.shape
    kept = merged.shape[1]
    new_length = length - span_length + kept
    index = torch.arange(new_length, device=embeds.device)[None, :]
    start = span_start[:, None]
    in_span = (index >= start) & (index < start + kept)
    span_offset = (index - start).clamp(0, max(kept - 1, 0))
    outside = torch.where(index < start, index, index - kept + span_length)
    source = torch.where(in_span, start + merged_source.gather(1, span_offset), outside)
    from_embeds = embeds.gather(1, torch.where(in_span, 0, outside)[..., None].expand(batch, new_length, dim))
    from_merged = merged.gather(1, span_offset[..., None].expand(batch, new_length, dim))
    return torch.where(in_span[..., None], from_merged, from_embeds), source


def last_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float | None,
) -> torch.Tensor:
    """Head-averaged softmax attention of the last query position, ``[B, L_kv]``, fp32.

    Recomputed from the q/k an SDPA call receives (``[B, H, L, D]`` and ``[B, H_kv, L_kv, D]``,
    grouped-query heads repeated), so the model keeps SDPA and no ``output_attentions``.
    The last query sees every key under a causal mask; ``attn_mask`` (bool or additive) is applied.
    """
    q = query[:, :, -1:, :].float()
    k = key.float()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        last_row = attn_mask[..., -1:, :]
        if last_row.dtype == torch.bool:
            scores = scores.masked_fill(~last_row, float("-inf"))
        else:
            scores = scores + last_row.float()
    return scores.softmax(-1).mean(1)[:, 0, :]


def span_mask(sequence: torch.Tensor, start: int, count: int) -> torch.Tensor:
    """``[B, L]`` true on ``[start, start + count)``: the video's span where it was concatenated in, not
    scattered at a mask."""
    index = torch.arange(sequence.shape[1], device=sequence.device)
    return ((index >= start) & (index < start + count)).expand(sequence.shape[0], -1)


def last_query_probabilities(probabilities: torch.Tensor) -> torch.Tensor:
    """Head-averaged attention of the last query, ``[B, L_kv]`` fp32, read from a decoder's own softmax
    output ``[B, H, L, L_kv]`` (hand-written attention: ``softmax(q @ k^T * scale + mask) @ v``)."""
    return probabilities[:, :, -1, :].float().mean(1)


def gather_tokens(x: torch.Tensor, keep: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Keep tokens ``keep[B, L'']`` along the sequence dims ``dims`` of ``x``.

    Used for what layers K.. read besides the hidden state: rotary cos/sin ``[B, L, D]``,
    masks ``[B, 1, L, L]``; and with ``keep = source`` for the original positions of merged tokens. A batch dim of 1 is broadcast to B. Dim 0 is a sequence dim only
    for a tensor without a batch dim (a shared ``[L, L]`` mask), read with batch 1.
    """
    batch, kept = keep.shape
    if 0 in dims:
        if batch != 1:
            raise ValueError(f"a tensor without a batch dim is gathered along dim 0 only for batch 1, not {batch}")
        for dim in dims:
            x = x.index_select(dim, keep[0])
        return x
    for dim in dims:
        if x.shape[0] != batch:
            x = x.expand(batch, *x.shape[1:])
        index_shape = [batch] + [1] * (x.dim() - 1)
        index_shape[dim] = kept
        target = list(x.shape)
        target[dim] = kept
        x = x.gather(dim, keep.view(index_shape).expand(target))
    return x


def restore_dropped_slots(x: torch.Tensor, keep: torch.Tensor, length: int, dim: int) -> torch.Tensor:
    """``x`` with the ``L''`` tokens ``keep[B, L'']`` kept by the inner stage put back at their indices in a
    sequence of ``length`` along ``dim`` (batch first), zeros in the dropped slots: a padded batch's cache of
    layers K.. keeps the prefill's full length, its dropped slots masked (``mask_dropped_slots``)."""
    index_shape = [keep.shape[0]] + [1] * (x.dim() - 1)
    index_shape[dim] = keep.shape[1]
    target = list(x.shape)
    target[dim] = length
    return x.new_zeros(target).scatter(dim, keep.view(index_shape).expand(x.shape), x)


def kept_slots(keep: torch.Tensor, length: int) -> torch.Tensor:
    """``[B, length]`` bool: the slots of the tokens ``keep[B, L'']`` the inner stage kept."""
    return keep.new_zeros(keep.shape[0], length, dtype=torch.bool).scatter(1, keep, True)


def mask_dropped_slots(mask: torch.Tensor | None, slots: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """An SDPA mask that also hides the slots the inner stage dropped: ``slots[B, L']`` (True: kept) covers
    the prefill's keys, every key after them (decoded tokens) stays visible. ``mask``: None, bool (True:
    attend) or additive float, broadcastable to ``[B, H, q, kv]``; ``key``: ``[B, H, kv, D]``."""
    decoded = slots.new_ones(slots.shape[0], key.shape[-2] - slots.shape[1])
    visible = torch.cat([slots, decoded], dim=1)[:, None, None, :]
    if mask is None:
        return visible
    if mask.dtype == torch.bool:
        return mask & visible
    return mask.masked_fill(~visible, torch.finfo(mask.dtype).min)
