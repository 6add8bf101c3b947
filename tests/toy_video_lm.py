"""A toy video LLM written for the tests, not from transformers, with no layout record.

Vision encoder (patch embedding, bidirectional SDPA layers) -> projector -> visual features
placed at the video tokens with ``index_put`` -> decoder layers with causal SDPA and RoPE, and
a KV cache of its own (a tuple of per-layer key/value tensors, returned and passed back).
It only shares the conventions any such model has: a ``config`` naming the video token, and
modules named ``vision`` and ``layers``.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotate_half(x):
    first, second = x.chunk(2, dim=-1)
    return torch.cat([-second, first], dim=-1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def project(self, x, cos=None, sin=None):
        """(q, k, v) as ``[B, H, L, D]``, rotary applied when cos/sin are given."""
        batch, length, _ = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if cos is not None:
            q = q * cos[:, None] + rotate_half(q) * sin[:, None]
            k = k * cos[:, None] + rotate_half(k) * sin[:, None]
        return q, k, v

    def forward(self, x, cos=None, sin=None, cache=None, causal=False):
        q, k, v = self.project(x, cos, sin)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out(attended.transpose(1, 2).reshape(x.shape)), (k, v)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x, cos=None, sin=None, cache=None, causal=False):
        attended, new_cache = self.attn(self.norm1(x), cos, sin, cache, causal)
        x = x + attended
        return x + self.mlp(self.norm2(x)), new_cache


class VisionEncoder(nn.Module):
    def __init__(self, dim: int, heads: int, depth: int, patch: int):
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(3 * patch * patch, dim)
        self.layers = nn.ModuleList(Block(dim, heads) for _ in range(depth))

    def forward(self, pixels):  # [F, 3, S, S] -> [F, P, dim]
        patches = F.unfold(pixels, self.patch, stride=self.patch).transpose(1, 2)
        x = self.embed(patches)
        for layer in self.layers:
            x, _ = layer(x)
        return x


class ToyVideoLM(nn.Module):
    def __init__(self, vocab=64, dim=32, heads=2, depth=4, vision_dim=16, vision_depth=2, patch=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.config = SimpleNamespace(model_type="toy_video_lm", video_token_id=vocab - 1)
        self.embed = nn.Embedding(vocab, dim)
        self.vision = VisionEncoder(vision_dim, heads, vision_depth, patch)
        self.projector = nn.Linear(vision_dim, dim)
        self.layers = nn.ModuleList(Block(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.inv_freq = 1.0 / (10000 ** (torch.arange(0, dim // heads, 2).float() / (dim // heads)))
        self.eval()

    def rotary(self, positions):  # [B, L] -> cos, sin [B, L, D]
        angles = positions[..., None].float() * self.inv_freq
        angles = torch.cat([angles, angles], dim=-1)
        return angles.cos(), angles.sin()

    def video_features(self, pixel_values):  # [B, T, 3, S, S] -> [B*T, P, dim]
        return self.projector(self.vision(pixel_values.flatten(0, 1)))

    def forward(self, input_ids, pixel_values=None, cache=None):
        x = self.embed(input_ids)
        if pixel_values is not None:
            features = self.video_features(pixel_values)
            x = x.index_put((input_ids == self.config.video_token_id,), features.reshape(-1, x.shape[-1]))
        past = cache[0][0].shape[2] if cache is not None else 0
        positions = torch.arange(past, past + input_ids.shape[1], device=input_ids.device)[None]
        cos, sin = self.rotary(positions)
        new_cache = []
        for index, layer in enumerate(self.layers):
            x, layer_cache = layer(x, cos, sin, cache[index] if cache is not None else None, causal=cache is None)
            new_cache.append(layer_cache)
        return self.head(self.norm(x)), tuple(new_cache)


def greedy(model, input_ids, pixel_values, new_tokens: int) -> list[int]:
    """The toy's own generation loop: prefill with the video, then one token at a time on its cache."""
    logits, cache = model(input_ids, pixel_values)
    tokens = [int(logits[0, -1].argmax())]
    for _ in range(new_tokens - 1):
        logits, cache = model(torch.tensor([[tokens[-1]]]), None, cache)
        tokens.append(int(logits[0, -1].argmax()))
    return tokens
