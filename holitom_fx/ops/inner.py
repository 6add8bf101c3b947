"""Inner-LLM merging (spec, prefill only): keep the most-attended visual tokens, fold the rest."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .checks import values_checkable
from .segment import segment_sum


def inner_kept_count(span_length: int, ratio: float) -> int:
    """Visual tokens the inner stage keeps: ``round(V * (1 - r))``, at least one when V > 0

    (the folded tokens need a kept token to go to)."""
    return max(round(span_length * (1.0 - ratio)), min(span_length, 1))


def inner_merge(
    hidden: torch.Tensor,
    attention: torch.Tensor,
    span_start: torch.Tensor,
    span_length: int,
    ratio: float,
    visual: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shorten ``hidden[B, L, E]`` by folding the least-attended visual tokens.

    Args:
        hidden: layer-K input hidden states; ``[B, L, *S]`` (a residual stream of several vectors per token:
            hyper-connections' ``[B, L, N, E]``) is merged as ``[B, L, prod(S)]``, each token one vector.
        attention: ``[B, L]`` head-averaged attention of the last query at layer K-1.
        span_start: LongTensor[B], first visual token of each row (left padding moves it).
        span_length: V, visual tokens per row (the same for every row).
        ratio: fraction of the V visual tokens folded away.
        visual: LongTensor[B, V], increasing: the visual tokens' indices where they are not one span
            (Qwen3-VL's frames, each in a span of its own); ``span_start`` is then ignored.

    Keeps ``round(V * (1 - ratio))`` visual tokens (at least one) with the largest attention (ties: lower
    index). Every other visual token i joins the kept token of largest cosine similarity
    (ties: lower index) and is folded in index order, ``h_j <- (h_j + h_i) / 2``; the fold is
    evaluated in closed form, ``h_j / 2^m + sum_k h_{i_k} / 2^(m-k+1)``, in fp32.
    Returns ``(hidden[B, L', E], keep[B, L'])``, ``keep`` holding the original indices of the
    surviving tokens in order (use it to gather positions).
    """
    if hidden.dim() < 3 or attention.shape != hidden.shape[:2]:
        raise ValueError(f"inner_merge: hidden must be [B, L, E] (or [B, L, *S]) and attention [B, L], got "
                         f"{tuple(hidden.shape)} and {tuple(attention.shape)}")
    if hidden.dim() > 3:
        merged, keep = inner_merge(hidden.flatten(2), attention, span_start, span_length, ratio, visual)
        return merged.unflatten(2, hidden.shape[2:]), keep
    batch, length, dim = hidden.shape
    if visual is not None:
        if visual.shape != (batch, span_length):
            raise ValueError(f"inner_merge: visual must be [B, V] = [{batch}, {span_length}], got "
                             f"{tuple(visual.shape)}")
    elif span_start.shape != (batch,):
        raise ValueError(f"inner_merge: span_start must be [B] = [{batch}], got {tuple(span_start.shape)}")
    if not 0 <= span_length <= length:
        raise ValueError(f"inner_merge: span_length={span_length} must be in [0, {length}]")
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"inner_merge: ratio={ratio} must be in [0, 1)")
    if visual is None and values_checkable(span_start):
        if bool(((span_start < 0) | (span_start + span_length > length)).any()):
            raise ValueError(f"inner_merge: visual span [start, start + {span_length}) leaves [0, {length})")
    device = hidden.device
    n_keep = inner_kept_count(span_length, ratio)
    n_drop = span_length - n_keep
    rows = torch.arange(length, device=device).expand(batch, length)
    if n_drop == 0:
        return hidden, rows

    if visual is None:
        visual = span_start[:, None] + torch.arange(span_length, device=device)
    by_attention = torch.sort(attention.gather(1, visual).float(), dim=1, descending=True, stable=True).indices
    kept_local = torch.sort(by_attention[:, :n_keep], dim=1).values
    dropped_local = torch.sort(by_attention[:, n_keep:], dim=1).values
    kept_index = visual.gather(1, kept_local)
    dropped_index = visual.gather(1, dropped_local)

    h = hidden.float()
    h_kept = h.gather(1, kept_index[..., None].expand(-1, -1, dim))
    h_dropped = h.gather(1, dropped_index[..., None].expand(-1, -1, dim))
    similarity = F.normalize(h_dropped, dim=-1) @ F.normalize(h_kept, dim=-1).transpose(1, 2)
    target = similarity.argmax(-1)  # [B, n_drop]

    member = F.one_hot(target, n_keep).to(torch.long)  # [B, n_drop, n_keep], rows in index order
    members = member.sum(1)  # m_j
    order_in_target = (member.cumsum(1) * member).sum(-1)  # k of each dropped token, 1-based
    m_of_target = members.gather(1, target)
    w_dropped = torch.exp2(-(m_of_target - order_in_target + 1).to(h.dtype))
    w_kept = torch.exp2(-members.to(h.dtype))
    slot = (torch.arange(batch, device=device)[:, None] * n_keep + target).flatten()
    folded_in = segment_sum((h_dropped * w_dropped[..., None]).view(batch * n_drop, dim), slot, batch * n_keep)
    folded = h_kept * w_kept[..., None] + folded_in.view(batch, n_keep, dim)

    merged = h.scatter(1, kept_index[..., None].expand(-1, -1, dim), folded).to(hidden.dtype)
    survives = torch.ones(batch, length, dtype=torch.bool, device=device).scatter(1, dropped_index, False)
    keep = torch.sort((~survives).to(torch.uint8), dim=1, stable=True).indices[:, : length - n_drop]
    return merged.gather(1, keep[..., None].expand(-1, -1, dim)), keep
