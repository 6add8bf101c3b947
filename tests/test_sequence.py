"""Placing merged visual tokens into a sequence: ``splice_span`` and ``place_by_frame``."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, strategies as st

from holitom_fx.ops import place_by_frame, splice_span


@st.composite
def placements(draw, split_frames: bool):
    """A row layout: text, then T frames of N video tokens (with text between frames when
    ``split_frames``), then text; and a frame-major choice of K merged tokens."""
    frames, per_frame = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    batch = draw(st.integers(1, 2))
    gaps = [draw(st.integers(1, 3)) if split_frames and t else 0 for t in range(frames)]
    before, after = draw(st.integers(0, 3)), draw(st.integers(0, 3))
    pad = [draw(st.integers(0, 2)) for _ in range(batch)]
    length = max(pad) + before + sum(gaps) + frames * per_frame + after
    mask = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(batch):
        cursor = length - (before + sum(gaps) + frames * per_frame + after) + before  # left padding
        for t in range(frames):
            cursor += gaps[t]
            mask[row, cursor:cursor + per_frame] = True
            cursor += per_frame
    kept = draw(st.integers(1, frames * per_frame))
    sources = []
    for _ in range(batch):
        chosen = sorted(draw(st.permutations(range(frames * per_frame)))[:kept])
        # frame-major, any order within a frame
        by_frame = sorted(chosen, key=lambda i: (i // per_frame, draw(st.integers(0, 9))))
        sources.append(by_frame)
    seed = draw(st.integers(0, 2 ** 16))
    embeds = torch.randn(batch, length, 3, generator=torch.Generator().manual_seed(seed))
    merged = torch.randn(batch, kept, 3, generator=torch.Generator().manual_seed(seed + 1))
    return embeds, mask, merged, torch.tensor(sources), frames, per_frame


@given(placements(split_frames=False))
def test_on_one_span_it_places_as_splice_span(case):
    embeds, mask, merged, source, frames, per_frame = case
    start = mask.int().argmax(1)
    expected = splice_span(embeds, start, frames * per_frame, merged, source)
    placed = place_by_frame(embeds, mask, merged, source, frames, per_frame)
    assert torch.equal(placed[0], expected[0]) and torch.equal(placed[1], expected[1])


@given(placements(split_frames=True))
def test_merged_tokens_stay_in_their_frame_span_and_text_is_kept(case):
    embeds, mask, merged, source, frames, per_frame = case
    placed, original = place_by_frame(embeds, mask, merged, source, frames, per_frame)
    batch, kept = merged.shape[:2]
    assert placed.shape == (batch, mask.shape[1] - frames * per_frame + kept, 3)
    for row in range(batch):
        video = torch.nonzero(mask[row]).flatten()
        text = torch.nonzero(~mask[row]).flatten()
        is_text = ~mask[row][original[row]]
        assert original[row][is_text].tolist() == text.tolist()  # every text token, in order
        assert torch.equal(placed[row][is_text], embeds[row, text])
        merged_at = torch.nonzero(~is_text).flatten()
        assert torch.equal(placed[row, merged_at], merged[row])  # merged order kept
        assert torch.equal(original[row, merged_at], video[source[row]])  # source: the representative's index
        for slot, grid_index in zip(merged_at.tolist(), source[row].tolist()):
            frame_first = int(video[grid_index // per_frame * per_frame])
            text_before = int((text < frame_first).sum())  # the merged token follows exactly these
            assert int(is_text[:slot].sum()) == text_before


@pytest.mark.parametrize("pad, expected", [
    ((0, 0, 0, 23), (0, 0, 0, 39)),   # a chunk pad to 64 of 41 tokens: 25 merged tokens pad to 64 too
    ((0, 0, 0, 0), (0, 0, 0, 16)),    # L a whole number of chunks: the traced pad of 0 grows as well
    ((0, 0, -37, 0), (0, 0, -21, 0)), # a conv state keeping the last 4 tokens keeps 4
    ((0, 0, 3, 0), None),             # a causal left pad of fixed size stays
    ((0, 1, 0, 0), None),             # a pad of another dim: not the sequence's
])
def test_pads_along_the_sequence_keep_their_output_length(pad, expected):
    from passes.sequence_length import _resized_pad

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    x.meta["example_value"] = torch.empty(1, 41 if pad != (0, 0, 0, 0) else 64, 8)
    old, new = x.meta["example_value"].shape[1], x.meta["example_value"].shape[1] - 16
    node = graph.call_function(torch.nn.functional.pad, (x, pad))
    assert _resized_pad(node, old, new) == expected


@pytest.mark.parametrize("target, args, kwargs, expected", [
    ("clamp", (0, 40), {}, ((0, 24), {})),                  # an index clamped into the sequence: into L'
    (torch.clamp, (0,), {"max": 40}, ((0,), {"max": 24})),  # the bound given by name
    ("clamp_max", (40,), {}, ((24,), {})),                  # clamp_max's bound is its first argument
    ("clamp", (0, 41), {}, None),                           # L itself is the literal rewrite's, not this one's
    ("clamp", (40, 100), {}, None),                         # L - 1 as the lower bound is not an index's clamp
    ("clamp", (0, 7), {}, None),                            # another bound stays
])
def test_an_index_clamped_to_the_last_token_follows_the_shortened_sequence(target, args, kwargs, expected):
    from passes.sequence_length import _resized_clamp

    graph = torch.fx.Graph()
    x = graph.placeholder("x")
    if isinstance(target, str):
        node = graph.call_method(target, (x, *args), kwargs)
    else:
        node = graph.call_function(target, (x, *args), kwargs)
    resized = _resized_clamp(node, 41, 25)
    assert resized == (None if expected is None else ((x, *expected[0]), expected[1]))
