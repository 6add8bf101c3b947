import pytest
import torch
from hypothesis import given, strategies as st

from holitom_fx import HoliTomConfig
from holitom_fx.ops import exact_budget, outer_merge

from . import reference_holitom as ref
from .strategies import configs, video_grids


def frames_of_segment(segments: list[list[int]], frame: int) -> range:
    for s, e in segments:
        if s <= frame <= e:
            return range(s, e + 1)
    raise AssertionError(f"frame {frame} is in no segment {segments}")


@given(video_grids(), configs(budget=st.just("exact")))
def test_exact_budget_holds(grid, cfg):
    features, saliency = grid
    frames, tokens, _ = features.shape
    out = outer_merge(features, saliency, cfg)
    assert out.tokens.shape == (exact_budget(frames, tokens, cfg.retain_ratio), features.shape[-1])
    assert out.tokens.shape[0] == round(cfg.retain_ratio * frames * tokens)
    assert out.positions.shape == out.tokens.shape[:1]


@given(video_grids(max_frames=5, max_tokens=8), configs())
def test_positions_are_valid_and_unique(grid, cfg):
    features, saliency = grid
    out = outer_merge(features, saliency, cfg)
    positions = out.positions.tolist()
    assert len(set(positions)) == len(positions)
    assert all(0 <= p < features.shape[0] * features.shape[1] for p in positions)
    # A static token sits at the first frame of its window.
    segments = out.segments.tolist()
    starts = {s for s, _ in segments}
    tokens_per_frame = features.shape[1]
    for p, token in zip(positions, out.tokens):
        if not torch.equal(token, features.view(-1, features.shape[-1])[p]) and p // tokens_per_frame not in starts:
            # Not a copy and not at a window start: must be a dynamic cluster token (D > 0).
            assert cfg.contextual_ratio > 0


@given(video_grids(max_frames=5, max_tokens=6, max_dim=4), configs())
def test_every_token_is_a_convex_combination_within_its_segment(grid, cfg):
    """Tag each input token with a one-hot coordinate: the output's tag part is its mixing weights."""
    features, saliency = grid
    frames, tokens, dim = features.shape
    tags = 1e-3 * torch.eye(frames * tokens, dtype=torch.float64)
    tagged = torch.cat([features.double(), tags.view(frames, tokens, -1)], dim=-1)
    out = outer_merge(tagged, saliency, cfg)
    weights = out.tokens[:, dim:] / 1e-3
    segments = out.segments.tolist()
    assert (weights > -1e-9).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(len(weights), dtype=torch.float64))
    for position, row in zip(out.positions.tolist(), weights):
        allowed = torch.zeros(frames, tokens, dtype=torch.bool)
        allowed[list(frames_of_segment(segments, position // tokens))] = True
        assert row.view(frames, tokens).masked_fill(allowed, 0).abs().max() < 1e-9
        if cfg.beta > 0:
            assert row[position] > 0  # the representative itself contributes


@given(video_grids(), configs(budget=st.just("reference")))
def test_reference_budget_reproduces_the_spec(grid, cfg):
    features, saliency = grid
    expected, positions, segments, removed = ref.outer_merge(features, saliency, cfg)
    out = outer_merge(features, saliency, cfg)
    assert out.segments.tolist() == [list(s) for s in segments]
    assert int(out.segmentation.removed) == removed
    assert out.positions.tolist() == positions
    torch.testing.assert_close(out.tokens, expected, rtol=1e-5, atol=1e-5)


@given(video_grids(), configs(retain_ratio=st.just(1.0), tau=st.sampled_from([1.01, 1.5, 3.0]),
                              contextual_ratio=st.just(0.0)))
def test_identity_at_full_retain_without_temporal_merging(grid, cfg):
    features, saliency = grid
    out = outer_merge(features, saliency, cfg)
    assert torch.equal(out.tokens, features.reshape(-1, features.shape[-1]))
    assert out.positions.tolist() == list(range(features.shape[0] * features.shape[1]))


@given(video_grids(), configs(retain_ratio=st.just(1.0), tau=st.just(1.5), contextual_ratio=st.just(0.5)))
def test_full_retain_with_contextual_tokens_keeps_every_token(grid, cfg):
    features, saliency = grid
    out = outer_merge(features, saliency, cfg)
    order = torch.argsort(out.positions)
    assert torch.equal(out.tokens[order], features.reshape(-1, features.shape[-1]))


@given(video_grids(max_frames=5), st.sampled_from([torch.bfloat16, torch.float16]), configs())
def test_low_precision_inputs(grid, dtype, cfg):
    """Half inputs are computed in fp32 internally: same result as the fp32 run on the rounded input."""
    features, saliency = grid
    low = features.to(dtype)
    out = outer_merge(low, saliency, cfg)
    expected = outer_merge(low.float(), saliency, cfg)
    assert out.tokens.dtype == dtype
    assert torch.equal(out.positions, expected.positions)
    torch.testing.assert_close(out.tokens, expected.tokens.to(dtype), rtol=0, atol=0)


def test_contextual_tokens_in_long_windows():
    """The released code crashes for D > 0 with windows longer than one frame."""
    torch.manual_seed(1)
    base = torch.randn(16, 8)
    features = torch.stack([base + 0.01 * torch.randn(16, 8) for _ in range(4)])
    features[:, 8:] = torch.randn(4, 8, 8)  # half the grid moves
    cfg = HoliTomConfig(retain_ratio=0.5, tau=0.9, contextual_ratio=0.5, budget="reference")
    out = outer_merge(features, torch.rand(4, 16), cfg)
    assert out.segments.tolist() == [[0, 3]]
    expected, positions, _, _ = ref.outer_merge(features, torch.rand(4, 16), cfg)
    assert out.tokens.shape[0] == expected.shape[0]


def test_single_frame_video():
    features, saliency = torch.randn(1, 10, 4), torch.rand(1, 10)
    out = outer_merge(features, saliency, HoliTomConfig(retain_ratio=0.3))
    assert out.segments.tolist() == [[0, 0]] and out.tokens.shape == (3, 4)
    # One frame, D = 0: the three most salient tokens, in position order.
    assert out.positions.tolist() == sorted(torch.topk(saliency[0], 3).indices.tolist())


@pytest.mark.parametrize("features,saliency,match", [
    (torch.zeros(4, 5), torch.zeros(4, 5), r"features must be \[T, N, E\]"),
    (torch.zeros(0, 5, 3), torch.zeros(0, 5), "empty frame grid"),
    (torch.zeros(2, 0, 3), torch.zeros(2, 0), "empty frame grid"),
    (torch.zeros(2, 5, 3), torch.zeros(2, 4), r"saliency must be \[T, N\]"),
    (torch.zeros(2, 5, 3, dtype=torch.long), torch.zeros(2, 5), "floating point"),
    (torch.full((2, 5, 3), float("nan")), torch.zeros(2, 5), "finite"),
    (torch.zeros(2, 5, 3), torch.full((2, 5), float("inf")), "finite"),
])
def test_bad_input_gives_a_clear_error(features, saliency, match):
    with pytest.raises(ValueError, match=match):
        outer_merge(features, saliency, HoliTomConfig())


@given(video_grids(max_frames=5, max_tokens=8), configs())
def test_carried_features_follow_the_merge_without_steering_it(grid, cfg):
    """Features carried along (Qwen3-VL's deepstack) are merged with the tokens' own weights: carrying a
    copy of the features reproduces the tokens, and the tokens do not change."""
    features, saliency = grid
    plain = outer_merge(features, saliency, cfg)
    carried_noise = torch.randn(*features.shape[:2], 3, generator=torch.Generator().manual_seed(0))
    out = outer_merge(features, saliency, cfg, carried=torch.cat([features, carried_noise], -1))
    assert plain.carried is None
    assert torch.equal(out.tokens, plain.tokens) and torch.equal(out.positions, plain.positions)
    torch.testing.assert_close(out.carried[:, :features.shape[-1]], out.tokens, rtol=1e-5, atol=1e-5)
    assert out.carried.shape == (out.tokens.shape[0], features.shape[-1] + 3)
