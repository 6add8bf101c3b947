"""Saliency of frame-grid tokens (spec, "Saliency"): attention received in the vision encoder.

The reference ranks dynamic tokens by the softmax attention each patch *receives* in the
vision-encoder layer whose output feeds the projector, averaged over heads and queries,
then pooled to the frame grid the way the features are. Here it is recomputed from the q/k
that layer's SDPA call receives, so the encoder keeps SDPA and no ``output_attentions``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


#: Frames whose attention probabilities exist at once: the saliency's peak memory is
#: ``FRAME_CHUNK x heads x patches x patches`` floats whatever the frame count (272 MB at SigLIP-384).
FRAME_CHUNK = 8


def attention_received(
    query: torch.Tensor,
    key: torch.Tensor,
    attn_mask: torch.Tensor | None,
    scale: float | None,
    frame_chunk: int = FRAME_CHUNK,
) -> torch.Tensor:
    """Softmax attention each key receives, averaged over heads and queries: ``[B, L_kv]``, fp32.

    ``query [B, H, L, D]``, ``key [B, H_kv, L_kv, D]`` (grouped-query heads repeated);
    ``attn_mask`` (bool or additive, broadcastable to ``[B, H, L, L_kv]``) is applied.
    Every row of the result sums to 1. Computed ``frame_chunk`` rows of the batch (frames) at a time, so
    the ``[B, H, L, L_kv]`` probabilities are never all in memory (a loop unrolled when traced).
    """
    chunks = []
    for start in range(0, query.shape[0], frame_chunk):
        rows = slice(start, start + frame_chunk)
        mask = attn_mask[rows] if attn_mask is not None and attn_mask.dim() == 4 and attn_mask.shape[0] > 1 \
            else attn_mask
        chunks.append(_received(query[rows], key[rows], mask, scale))
    return torch.cat(chunks) if len(chunks) > 1 else chunks[0]


def _received(query: torch.Tensor, key: torch.Tensor, attn_mask: torch.Tensor | None,
              scale: float | None) -> torch.Tensor:
    q = query.float()
    k = key.float()
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q @ k.transpose(-1, -2)) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask.float()
    return scores.softmax(-1).mean(dim=(1, 2))


def pool_saliency(saliency: torch.Tensor, drop_leading: int, side: int, pooled_side: int,
                  mode: str = "bilinear") -> torch.Tensor:
    """Pool per-patch saliency ``[F, drop_leading + side*side]`` to the frame grid ``[F, pooled_side**2]``.

    Drops the leading non-patch tokens (a CLS token), then pools the ``side x side`` map the way
    the model pools its features: ``"bilinear"`` resize (LLaVA-OneVision, 27x27 -> 14x14),
    ``"average"`` or ``"max"`` pooling with stride ``side // pooled_side`` (LLaVA-NeXT-Video).
    """
    patches = saliency[:, drop_leading:]
    if patches.shape[1] != side * side:
        raise ValueError(f"pool_saliency: expected {drop_leading} + {side}x{side} tokens per frame, "
                         f"got {saliency.shape[1]}")
    if pooled_side == side:
        return patches
    grid = patches.reshape(-1, 1, side, side)
    if mode == "bilinear":
        return F.interpolate(grid, size=(pooled_side, pooled_side), mode="bilinear").flatten(1)
    stride = side // pooled_side
    pool = F.avg_pool2d if mode == "average" else F.max_pool2d
    return pool(grid, kernel_size=stride, stride=stride).flatten(1)


def feature_saliency(grid: torch.Tensor) -> torch.Tensor:
    """Fallback saliency when the vision encoder's attention is not in reach: token L2 norm, ``[T, N]``.

    In ViT features, the tokens that receive the most attention are the high-norm ones;
    the norm is a cheap, attention-free stand-in for "attention received".
    """
    return grid.float().norm(dim=-1)
