import pytest
import torch
from hypothesis import given, strategies as st

from holitom_fx.ops import frame_similarity, segment_frames
from holitom_fx.ops.segmentation import window_profit

from . import reference_holitom as ref


@st.composite
def similarities(draw, max_frames=8, max_tokens=5):
    """Similarity grids from a small value set, so windows tie often."""
    frames = draw(st.integers(1, max_frames))
    tokens = draw(st.integers(1, max_tokens))
    values = draw(st.lists(st.sampled_from([0.2, 0.7, 0.9, 1.0]), min_size=(frames - 1) * tokens,
                           max_size=(frames - 1) * tokens))
    return torch.tensor(values, dtype=torch.float32).view(frames - 1, tokens)


@given(similarities(), st.sampled_from([0.5, 0.8, 0.95]), st.integers(1, 9))
def test_segmentation_is_optimal_against_brute_force(sim, tau, max_window):
    seg = segment_frames(sim, tau, max_window)
    segments = seg.segments.tolist()
    frames = sim.shape[0] + 1
    # A partition of 0..T-1 into contiguous windows, in time order, within max_window.
    assert segments[0][0] == 0 and segments[-1][1] == frames - 1
    assert all(b[0] == a[1] + 1 for a, b in zip(segments, segments[1:]))
    assert all(0 <= e - s < max_window for s, e in segments)
    removed = int(seg.removed)
    assert removed == ref.brute_force_best(sim, tau, max_window)
    assert removed == sum(ref.window_profit(sim, tau, s, e) for s, e in segments)
    # The reference tie-break picks the same windows.
    assert [tuple(s) for s in segments] == ref.segment(sim, tau, max_window)[0]


@given(similarities(max_frames=6), st.sampled_from([0.5, 0.8]), st.integers(1, 6))
def test_window_profit_table_matches_definition(sim, tau, max_window):
    table = window_profit(sim, tau, max_window)
    for e in range(sim.shape[0] + 1):
        for w in range(1, min(e + 1, max_window) + 1):
            assert int(table[e, w - 1]) == ref.window_profit(sim, tau, e - w + 1, e)


def test_single_frame_is_one_segment():
    seg = segment_frames(torch.zeros(0, 4), 0.5, 8)
    assert seg.segments.tolist() == [[0, 0]] and int(seg.removed) == 0


def test_frame_similarity_is_adjacent_cosine():
    x = torch.randn(5, 3, 7)
    expected = torch.stack([torch.nn.functional.cosine_similarity(x[t], x[t + 1], dim=-1) for t in range(4)])
    torch.testing.assert_close(frame_similarity(x), expected)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"features must be \[T, N, E\]"):
        frame_similarity(torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"similarity must be \[T-1, N\]"):
        segment_frames(torch.zeros(2, 2, 2), 0.5, 4)
    with pytest.raises(ValueError, match="max_window"):
        segment_frames(torch.zeros(2, 2), 0.5, 0)


def test_nan_similarity_is_never_static():
    sim = torch.tensor([[float("nan"), 0.99]])
    seg = segment_frames(sim, 0.5, 4)
    assert int(seg.removed) == 1  # only the second position is static across the 2-frame window
