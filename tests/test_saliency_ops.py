"""``ops.attention_received`` in frame chunks: the same saliency as all frames at once, for any chunk,
grouped-query heads and masks; its peak memory then holds one chunk's probabilities, whatever the frames."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from holitom_fx.ops import attention_received


def explicit(query, key, mask, scale):
    """Head- and query-averaged softmax attention, written out for every frame at once."""
    key = key.repeat_interleave(query.shape[1] // key.shape[1], dim=1)
    scores = query @ key.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1).mean(dim=(1, 2))


@settings(deadline=None, max_examples=60)
@given(frames=st.integers(1, 11), heads=st.sampled_from([(2, 2), (4, 2), (4, 1)]), length=st.integers(1, 7),
       chunk=st.integers(1, 12), masked=st.sampled_from([None, "shared", "per_frame"]), seed=st.integers(0, 999))
def test_chunked_saliency_equals_all_frames_at_once(frames, heads, length, chunk, masked, seed):
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(frames, heads[0], length, 4, generator=generator)
    key = torch.randn(frames, heads[1], length, 4, generator=generator)
    mask = None
    if masked is not None:
        mask = torch.rand(frames if masked == "per_frame" else 1, 1, length, length, generator=generator) < 0.7
        mask[..., 0] = True  # every query sees a key
    received = attention_received(query, key, mask, 0.5, frame_chunk=chunk)
    torch.testing.assert_close(received, explicit(query, key, mask, 0.5), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(received.sum(-1), torch.ones(frames), rtol=1e-5, atol=1e-5)


def test_chunks_bound_the_probabilities_in_memory():
    """Every score matrix the op builds holds at most ``frame_chunk`` frames (seen through the matmuls)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Largest(TorchDispatchMode):
        largest = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if isinstance(out, torch.Tensor):
                Largest.largest = max(Largest.largest, out.numel())
            return out

    query, key = torch.randn(32, 4, 16, 8), torch.randn(32, 4, 16, 8)
    with Largest():
        attention_received(query, key, None, None, frame_chunk=8)
    assert Largest.largest == 8 * 4 * 16 * 16  # one chunk's [8, H, L, L] scores, not 32 frames'
