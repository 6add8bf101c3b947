"""Hypothesis strategies for video feature grids with real temporal redundancy."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from holitom_fx import HoliTomConfig


@st.composite
def video_grids(draw, max_frames: int = 6, max_tokens: int = 12, max_dim: int = 8):
    """``(features[T, N, E], saliency[T, N])``: per-frame drifts around a base so some tokens are static."""
    frames = draw(st.integers(1, max_frames))
    tokens = draw(st.integers(1, max_tokens))
    dim = draw(st.integers(2, max_dim))
    seed = draw(st.integers(0, 2**31 - 1))
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(tokens, dim, generator=generator)
    # Each frame either stays near the previous one or jumps, token by token.
    noise = draw(st.sampled_from([0.05, 0.3, 1.0]))
    features = [base]
    for _ in range(frames - 1):
        jump = torch.rand(tokens, 1, generator=generator) < draw(st.sampled_from([0.0, 0.3, 1.0]))
        step = noise * torch.randn(tokens, dim, generator=generator)
        fresh = torch.randn(tokens, dim, generator=generator)
        features.append(torch.where(jump, fresh, features[-1] + step))
    saliency = torch.rand(frames, tokens, generator=generator)
    return torch.stack(features), saliency


def configs(**fixed):
    return st.builds(
        HoliTomConfig,
        retain_ratio=fixed.get("retain_ratio", st.sampled_from([0.05, 0.1, 0.25, 0.37, 0.5, 0.8, 1.0])),
        tau=fixed.get("tau", st.sampled_from([0.3, 0.65, 0.8, 0.95, 1.5])),
        beta=fixed.get("beta", st.sampled_from([0.0, 0.6, 1.0])),
        contextual_ratio=fixed.get("contextual_ratio", st.sampled_from([0.0, 0.0, 0.3, 0.5, 1.0])),
        knn=fixed.get("knn", st.integers(1, 8)),
        max_window=fixed.get("max_window", st.sampled_from([1, 2, 3, 1024])),
        budget=fixed.get("budget", st.sampled_from(["exact", "reference"])),
    )
