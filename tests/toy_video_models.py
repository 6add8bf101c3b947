"""Three toy video LLMs with no ``config`` at all, each with its own boundary, decoder, KV cache and
greedy loop, and HoliTom applied by hand around each (``reference_generate``).

Shared: a vision encoder (patch embedding, bidirectional SDPA layers with a fused qkv) and a
projector giving per-frame features ``[B*T, P, dim]``. The video placeholder id is the module
constant ``VIDEO_TOKEN``, on no model. They differ where the features enter the sequence and in
the decoder:

* ``CatToy``: ONE placeholder; the features are concatenated in its place at a split point read
  with ``.item()`` (batch 1). GPT-2 style decoder (``h``): fused qkv, hand-written softmax attention
  with an additive causal mask built per layer over its keys (cache included), learned absolute
  positions added after the splice.
* ``WhereToy``: one placeholder per video token; rows gathered by a running count of the mask and
  put in with ``torch.where``. Decoder (``blocks``): separate q/k/v projections, SDPA, RoPE.
* ``IndexPutToy``: one placeholder per video token, features put in with ``index_put``. Decoder
  (``layers``): fused qkv, hand-written attention, RoPE, an additive causal mask built once per
  forward for all layers (none for a single-token step).

Every toy: ``forward(input_ids, pixel_values=None, cache=None) -> (logits, new_cache)``, pixel values
``[B, T, 3, 16, 16]``, the cache a tuple of per-layer ``(key, value)``; with a cache, positions go
on from the length of layer 0's keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from holitom_fx import HoliTomConfig
from holitom_fx.ops import feature_saliency, outer_merge, splice_span

from . import reference_holitom as ref

VIDEO_TOKEN = 63
VOCAB, DIM, HEADS, DEPTH = 64, 32, 2, 4
VISION_DIM, VISION_DEPTH, PATCH, SIZE = 16, 2, 4, 16
TOKENS_PER_FRAME = (SIZE // PATCH) ** 2  # 16: the toys do not pool


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


def apply_rotary(x, cos, sin):  # x [B, H, L, D], cos/sin [B, L, D]
    return x * cos[:, None] + rotate_half(x) * sin[:, None]


def inverse_frequencies(head_dim: int = DIM // HEADS) -> torch.Tensor:
    return 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))


def rotary_tables(inv_freq, positions):  # positions [B, L] -> cos, sin [B, L, D]
    angles = positions[..., None].float() * inv_freq
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos(), angles.sin()


def causal_mask(length: int, total: int, device=None) -> torch.Tensor:
    """Additive ``[length, total]`` mask: the queries are the last ``length`` of ``total`` positions."""
    return torch.full((length, total), float("-inf"), device=device).triu(total - length + 1)


def split_heads(x, heads):  # [B, L, H*D] -> [B, H, L, D]
    batch, length, dim = x.shape
    return x.view(batch, length, heads, dim // heads).transpose(1, 2)


def mlp(dim):
    return nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


# ----------------------------------------------------------------------------------------- vision


class VisionAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def project(self, x):
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def forward(self, x):
        q, k, v = self.project(x)
        attended = F.scaled_dot_product_attention(q, k, v)  # bidirectional
        return self.proj(attended.transpose(1, 2).reshape(x.shape))


class VisionLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = VisionAttention(dim, heads)
        self.mlp = mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionEncoder(nn.Module):
    def __init__(self, dim: int = VISION_DIM, heads: int = HEADS, depth: int = VISION_DEPTH, patch: int = PATCH):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.layers = nn.ModuleList(VisionLayer(dim, heads) for _ in range(depth))

    def forward(self, pixels):  # [F, 3, S, S] -> [F, P, dim]
        x = self.embed(F.unfold(pixels, self.patch, stride=self.patch).transpose(1, 2))
        for layer in self.layers:
            x = layer(x)
        return x


# --------------------------------------------------------------------------------------- CatToy


class GPTAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def project(self, x):
        q, k, v = self.c_attn(x).split(x.shape[-1], dim=-1)
        return split_heads(q, self.heads), split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x, cache=None):
        q, k, v = self.project(x)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        mask = causal_mask(q.shape[2], k.shape[2], x.device)
        weights = torch.softmax(q @ k.transpose(-1, -2) * self.head_dim ** -0.5 + mask, dim=-1)
        return self.c_proj((weights @ v).transpose(1, 2).reshape(x.shape)), (k, v)


class GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = GPTAttention(dim, heads)
        self.mlp = mlp(dim)

    def forward(self, x, cache=None):
        attended, new_cache = self.attn(self.ln_1(x), cache)
        x = x + attended
        return x + self.mlp(self.ln_2(x)), new_cache


class CatToy(nn.Module):
    """One placeholder token; the video's features are concatenated in its place (batch 1)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.wte = nn.Embedding(VOCAB, DIM)
        self.wpe = nn.Embedding(256, DIM)
        self.vision = VisionEncoder()
        self.projector = nn.Linear(VISION_DIM, DIM)
        self.h = nn.ModuleList(GPTBlock(DIM, HEADS) for _ in range(DEPTH))
        self.ln_f = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.eval()

    def video_features(self, pixel_values):  # [B, T, 3, S, S] -> [B*T, P, dim]
        return self.projector(self.vision(pixel_values.flatten(0, 1)))

    def forward(self, input_ids, pixel_values=None, cache=None):
        x = self.wte(input_ids)
        if pixel_values is not None:
            features = self.video_features(pixel_values)
            p = (input_ids[0] == VIDEO_TOKEN).long().argmax().item()
            x = torch.cat([x[:, :p], features.reshape(1, -1, x.shape[-1]), x[:, p + 1:]], dim=1)
        past = cache[0][0].shape[2] if cache is not None else 0
        x = x + self.wpe(torch.arange(past, past + x.shape[1], device=x.device))
        new_cache = []
        for index, block in enumerate(self.h):
            x, layer_cache = block(x, cache[index] if cache is not None else None)
            new_cache.append(layer_cache)
        return self.lm_head(self.ln_f(x)), tuple(new_cache)


# ------------------------------------------------------------------------------------- WhereToy


class SDPAAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)

    def project(self, x, cos, sin):
        q, k = split_heads(self.q_proj(x), self.heads), split_heads(self.k_proj(x), self.heads)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), split_heads(self.v_proj(x), self.heads)

    def forward(self, x, cos, sin, cache=None):
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=cache is None)
        return self.o_proj(attended.transpose(1, 2).reshape(x.shape)), (k, v)


class SDPABlock(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.attention_norm, self.ffn_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = SDPAAttention(dim, heads)
        self.feed_forward = mlp(dim)

    def forward(self, x, cos, sin, cache=None):
        attended, new_cache = self.attention(self.attention_norm(x), cos, sin, cache)
        x = x + attended
        return x + self.feed_forward(self.ffn_norm(x)), new_cache


class WhereToy(nn.Module):
    """One placeholder per video token; feature rows picked by a running count and put in with ``where``."""

    def __init__(self, seed: int = 1):
        super().__init__()
        torch.manual_seed(seed)
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.visual = VisionEncoder()
        self.mm_projector = nn.Linear(VISION_DIM, DIM)
        self.blocks = nn.ModuleList(SDPABlock(DIM, HEADS) for _ in range(DEPTH))
        self.final_norm = nn.LayerNorm(DIM)
        self.output = nn.Linear(DIM, VOCAB)
        self.register_buffer("inv_freq", inverse_frequencies(), persistent=False)
        self.eval()

    def video_features(self, pixel_values):
        return self.mm_projector(self.visual(pixel_values.flatten(0, 1)))

    def forward(self, input_ids, pixel_values=None, cache=None):
        x = self.tok_embeddings(input_ids)
        if pixel_values is not None:
            features = self.video_features(pixel_values)
            mask = input_ids == VIDEO_TOKEN
            rows = features.reshape(-1, x.shape[-1])[(mask.long().cumsum(-1) - 1).clamp(min=0)]
            x = torch.where(mask[..., None], rows, x)
        past = cache[0][0].shape[2] if cache is not None else 0
        cos, sin = rotary_tables(self.inv_freq, torch.arange(past, past + x.shape[1], device=x.device)[None])
        new_cache = []
        for index, block in enumerate(self.blocks):
            x, layer_cache = block(x, cos, sin, cache[index] if cache is not None else None)
            new_cache.append(layer_cache)
        return self.output(self.final_norm(x)), tuple(new_cache)


# ---------------------------------------------------------------------------------- IndexPutToy


class FusedRotaryAttention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv_proj = nn.Linear(dim, 3 * dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def project(self, x, cos, sin):
        batch, length, _ = x.shape
        q, k, v = self.qkv_proj(x).view(batch, length, 3, self.heads, self.head_dim).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def forward(self, x, cos, sin, mask=None, cache=None):
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        scores = torch.matmul(q, k.transpose(2, 3)) / self.head_dim ** 0.5
        if mask is not None:
            scores = scores + mask
        weights = F.softmax(scores.float(), dim=-1).to(q.dtype)
        return self.o_proj(torch.matmul(weights, v).transpose(1, 2).reshape(x.shape)), (k, v)


class DecoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_attn = FusedRotaryAttention(dim, heads)
        self.mlp = mlp(dim)

    def forward(self, x, cos, sin, mask=None, cache=None):
        attended, new_cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        x = x + attended
        return x + self.mlp(self.post_attention_layernorm(x)), new_cache


class IndexPutToy(nn.Module):
    """One placeholder per video token; the features put in with ``index_put``."""

    def __init__(self, seed: int = 2):
        super().__init__()
        torch.manual_seed(seed)
        self.embed_tokens = nn.Embedding(VOCAB, DIM)
        self.vision_tower = VisionEncoder()
        self.multi_modal_projector = nn.Linear(VISION_DIM, DIM)
        self.layers = nn.ModuleList(DecoderLayer(DIM, HEADS) for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        self.register_buffer("inv_freq", inverse_frequencies(), persistent=False)
        self.eval()

    def video_features(self, pixel_values):
        return self.multi_modal_projector(self.vision_tower(pixel_values.flatten(0, 1)))

    def forward(self, input_ids, pixel_values=None, cache=None):
        x = self.embed_tokens(input_ids)
        if pixel_values is not None:
            mask = input_ids == VIDEO_TOKEN
            x = x.index_put((mask,), self.video_features(pixel_values).reshape(-1, x.shape[-1]))
        past = cache[0][0].shape[2] if cache is not None else 0
        length = x.shape[1]
        cos, sin = rotary_tables(self.inv_freq, torch.arange(past, past + length, device=x.device)[None])
        mask = causal_mask(length, past + length, x.device) if length > 1 else None
        new_cache = []
        for index, layer in enumerate(self.layers):
            x, layer_cache = layer(x, cos, sin, mask, cache[index] if cache is not None else None)
            new_cache.append(layer_cache)
        return self.lm_head(self.norm(x)), tuple(new_cache)


TOYS = (CatToy, WhereToy, IndexPutToy)


def greedy(model, input_ids, pixel_values, new_tokens: int, step_logits: list | None = None) -> list[int]:
    """Any toy's generation loop: prefill with the video, then one token at a time on its cache;
    ``step_logits`` receives each step's last-position logits."""
    collected = step_logits if step_logits is not None else []
    logits, cache = model(input_ids, pixel_values)
    collected.append(logits[:, -1])
    tokens = [int(logits[0, -1].argmax())]
    for _ in range(new_tokens - 1):
        logits, cache = model(torch.tensor([[tokens[-1]]], device=input_ids.device), None, cache)
        collected.append(logits[:, -1])
        tokens.append(int(logits[0, -1].argmax()))
    return tokens


def video_prompt(model, frames: int, before: int = 3, after: int = 4) -> torch.Tensor:
    """``input_ids [1, L]``: ``before`` text tokens, the video's placeholders (one for ``CatToy``), ``after``."""
    video = 1 if isinstance(model, CatToy) else frames * TOKENS_PER_FRAME
    return torch.tensor([[1 + i for i in range(before)] + [VIDEO_TOKEN] * video + [9] * after])


# ------------------------------------------------------------------------- HoliTom applied by hand


@dataclass
class _Parts:
    """What the by-hand reference needs of one toy."""

    embed: Callable  # ids -> [1, L, dim]
    vision: VisionEncoder
    features: Callable  # pixels [1, T, 3, S, S] -> [T, P, dim]
    layers: nn.ModuleList
    rotary: bool  # positions as rotary cos/sin (else learned absolute, added at the input)
    inv_freq: torch.Tensor | None
    wpe: nn.Embedding | None
    attn_input: Callable  # (layer, x) -> (attention module, its normed input)
    run: Callable  # (layer, x, cos, sin, cache) -> (x, cache); cache None: causal prefill over x
    head: Callable  # x -> logits


def _parts(model) -> _Parts:
    if isinstance(model, CatToy):
        return _Parts(model.wte, model.vision, model.video_features, model.h, False, None, model.wpe,
                      lambda layer, x: (layer.attn, layer.ln_1(x)),
                      lambda layer, x, cos, sin, cache: layer(x, cache),
                      lambda x: model.lm_head(model.ln_f(x)))
    if isinstance(model, WhereToy):
        return _Parts(model.tok_embeddings, model.visual, model.video_features, model.blocks, True, model.inv_freq,
                      None, lambda layer, x: (layer.attention, layer.attention_norm(x)),
                      lambda layer, x, cos, sin, cache: layer(x, cos, sin, cache),
                      lambda x: model.output(model.final_norm(x)))
    if isinstance(model, IndexPutToy):
        def run(layer, x, cos, sin, cache):
            mask = causal_mask(x.shape[1], x.shape[1]) if cache is None else None
            return layer(x, cos, sin, mask, cache)

        return _Parts(model.embed_tokens, model.vision_tower, model.video_features, model.layers, True,
                      model.inv_freq, None, lambda layer, x: (layer.self_attn, layer.input_layernorm(x)), run,
                      lambda x: model.lm_head(model.norm(x)))
    raise TypeError(f"not a toy of this module: {type(model).__name__}")


def vision_saliency(vision: VisionEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """``[T, P]``: softmax attention each patch receives in the last vision layer, averaged over heads
    and queries, from that layer's own projections."""
    x = vision.embed(F.unfold(pixels.flatten(0, 1), vision.patch, stride=vision.patch).transpose(1, 2))
    for layer in vision.layers[:-1]:
        x = layer(x)
    last = vision.layers[-1]
    q, k, _ = last.attn.project(last.norm1(x))
    return ((q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1).mean(dim=(1, 2))


def _project(parts: _Parts, layer, x, cos, sin):
    attention, normed = parts.attn_input(layer, x)
    return attention.project(normed, cos, sin) if parts.rotary else attention.project(normed)


@torch.no_grad()
def reference_generate(model, ids: torch.Tensor, pixels: torch.Tensor, cfg: HoliTomConfig, new_tokens: int,
                       by_attention: bool = True, step_logits: list | None = None) -> tuple[torch.Tensor, list[int]]:
    """``(prefill logits of the last position [1, vocab], greedy tokens)`` of any toy here, with HoliTom
    applied by hand around its own modules: the outer stage on the features (dynamic tokens ranked by
    the vision attention, else by feature norm), the merged tokens in place of the placeholder(s),
    compact positions 0..L'-1 (``cfg.positions="original"``: each token at its representative's original
    position, decoding after the original length), the inner stage at ``cfg``'s layer K (attention of the last query in
    layer K-1), every layer with its own cache, decode steps at positions L' + step. Batch 1."""
    parts = _parts(model)
    frames = pixels.shape[1]
    features = parts.features(pixels)  # [T, P, dim]
    if by_attention:
        saliency = vision_saliency(parts.vision, pixels).reshape(frames, -1)
    else:
        saliency = feature_saliency(features)
    out = outer_merge(features, saliency, cfg)
    merged = out.tokens.shape[0]
    x = parts.embed(ids)
    start = int((ids[0] == VIDEO_TOKEN).long().argmax())
    if isinstance(model, CatToy):  # the one placeholder becomes the features, then the merged tokens
        x = torch.cat([x[:, :start], features.reshape(1, -1, x.shape[-1]), x[:, start + 1:]], dim=1)
    span = features.shape[0] * features.shape[1] if isinstance(model, CatToy) else int((ids[0] == VIDEO_TOKEN).sum())
    original_length = x.shape[1]
    x, source = splice_span(x, torch.tensor([start]), span, out.tokens[None], out.positions[None])
    length = x.shape[1]  # L'
    positions = source if cfg.positions == "original" else torch.arange(length)[None]
    decode_from = original_length if cfg.positions == "original" else length
    cos = sin = None
    if parts.rotary:
        cos, sin = rotary_tables(parts.inv_freq, positions)
    else:
        x = x + parts.wpe(positions[0])
    inner = cfg.resolve_inner_layer(len(parts.layers))
    caches, previous = [], x
    for index, layer in enumerate(parts.layers):
        if index == inner:
            q, k, _ = _project(parts, parts.layers[index - 1], previous, cos, sin)
            attention = ((q[:, :, -1:] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1).mean(1)[:, 0]
            x, keeps = ref.inner_merge_loop(x, attention, [start], merged, cfg.inner_ratio)
            if parts.rotary:  # kept tokens keep their positions
                cos, sin = cos[:, keeps[0]], sin[:, keeps[0]]
        previous = x
        x, cache = parts.run(layer, x, cos, sin, None)
        caches.append(cache)
    logits = parts.head(x)[:, -1]
    collected = step_logits if step_logits is not None else []
    collected.append(logits)
    tokens = [int(logits.argmax())]
    for step in range(new_tokens - 1):
        x = parts.embed(torch.tensor([[tokens[-1]]]))
        position = torch.tensor([[decode_from + step]])
        if parts.rotary:
            cos, sin = rotary_tables(parts.inv_freq, position)
        else:
            x = x + parts.wpe(position[0])
        for index, layer in enumerate(parts.layers):
            x, caches[index] = parts.run(layer, x, cos, sin, caches[index])
        collected.append(parts.head(x)[:, -1])
        tokens.append(int(collected[-1][0].argmax()))
    return logits, tokens
