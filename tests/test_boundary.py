"""The vision-token boundary in each placement style: found, merged, and equal to eager HoliTom."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch._dynamo
import torch.fx as fx

from holitom_fx import HoliTomConfig
from holitom_fx.archs import VideoLayout
from holitom_fx.ops import feature_saliency, outer_merge, place_by_frame, splice_span
from passes.context import GraphContext
from passes.frame_grid import GridError, span_frame_grid
from passes.manager import PassManager

TOKEN, OTHER, FRAMES, PER_FRAME, DIM = 9, 8, 3, 4, 8
SPAN = FRAMES * PER_FRAME + 1  # the grid and one trailing pass-through token
LAYOUT = VideoLayout(model_types=("toy",), tokens_per_frame=lambda config: PER_FRAME, pass_through_tokens=1)
MODEL_CONFIG = SimpleNamespace(model_type="toy", video_token_id=TOKEN)
CONFIG = HoliTomConfig(retain_ratio=0.5, tau=0.5, inner_layer="off")


def masked_scatter(embeds, ids, features):
    return embeds.masked_scatter((ids == TOKEN)[..., None], features) * 2


def index_put(embeds, ids, features):
    return embeds.index_put((ids == TOKEN,), features) * 2


def set_item(embeds, ids, features):
    embeds = embeds.clone()
    embeds[ids == TOKEN] = features
    return embeds * 2


def where(embeds, ids, features):
    mask = ids == TOKEN
    index = (mask.long().cumsum(-1) - 1).clamp(min=0)
    placed = features.reshape(ids.shape[0], -1, DIM).gather(1, (index - index[:, :1])[..., None].expand(-1, -1, DIM))
    return torch.where(mask[..., None], placed, embeds) * 2


def image_and_video(embeds, ids, features):
    """An image scatter (another token id, one token per row) before the video's: only the video is merged."""
    embeds = embeds.masked_scatter((ids == OTHER)[..., None], embeds[:, 1, :])
    return embeds.masked_scatter((ids == TOKEN)[..., None], features) * 2


def rewrite(fn, *args, context=lambda: GraphContext(CONFIG, LAYOUT, MODEL_CONFIG)):
    """Compile ``fn`` with the HoliTom passes (no Inductor); returns (callable taking args, context)."""
    found = {}

    def backend(traced, example_inputs):
        graph = fx.Graph()
        graph.output(graph.graph_copy(traced.graph, {}))
        gm = fx.GraphModule(traced, graph)  # Dynamo's own graph must stay as traced
        ctx = context()
        PassManager(ctx)(gm, example_inputs)
        runtime = [ctx.runtime_input(name) for name in ctx.extra_inputs]
        found["ctx"] = ctx
        return lambda *inputs: gm(*inputs, *runtime)

    torch._dynamo.reset()
    compiled = torch.compile(fn, backend=backend, fullgraph=True)
    compiled(*args)
    return compiled, found["ctx"]


def make_inputs(before: int, seed: int):
    """One row: ``before`` text tokens (the first an image placeholder), the video, two text tokens."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.tensor([[OTHER] + [1] * (before - 1) + [TOKEN] * SPAN + [2, 3]])
    embeds = torch.randn(1, ids.shape[1], DIM, generator=generator)
    base = torch.randn(PER_FRAME, DIM, generator=generator)
    grid = base + 0.3 * torch.randn(FRAMES, PER_FRAME, DIM, generator=generator)  # some static tokens
    features = torch.cat([grid.reshape(-1, DIM), torch.randn(1, DIM, generator=generator)])
    return embeds, ids, features


def expected(embeds, ids, features, style_places_image: bool):
    """Eager HoliTom: scatter, outer_merge of the grid (feature-norm saliency), splice, the model's math."""
    placed = embeds.clone()
    placed[ids == OTHER] = embeds[:, 1, :] if style_places_image else placed[ids == OTHER]
    placed = placed.masked_scatter((ids == TOKEN)[..., None], features)
    grid = features[:-1].reshape(FRAMES, PER_FRAME, DIM)
    out = outer_merge(grid, feature_saliency(grid), CONFIG)
    tokens = torch.cat([out.tokens, features[-1:]])[None]
    source = torch.cat([out.positions, torch.tensor([SPAN - 1])])[None]
    start = (ids == TOKEN).long().argmax(1)
    return splice_span(placed, start, SPAN, tokens, source)[0] * 2


@pytest.mark.parametrize("style", [masked_scatter, index_put, set_item, where, image_and_video],
                         ids=lambda f: f.__name__)
def test_each_placement_style_is_found_and_merged_like_eager_holitom(style):
    embeds, ids, features = make_inputs(before=3, seed=0)
    compiled, ctx = rewrite(style, embeds, ids, features)
    assert ctx.video is not None and ctx.video.frames == FRAMES
    assert ctx.video.new_length == ids.shape[1] - SPAN + round(CONFIG.retain_ratio * FRAMES * PER_FRAME) + 1
    result = compiled(embeds, ids, features)
    reference = expected(embeds, ids, features, style_places_image=style is image_and_video)
    torch.testing.assert_close(result, reference, rtol=1e-5, atol=1e-5)


def image_only(embeds, ids, features):
    return embeds.masked_scatter((ids == OTHER)[..., None], features[:1]) * 2


def test_a_graph_placing_only_another_token_is_left_alone():
    embeds, ids, features = make_inputs(before=3, seed=1)
    compiled, ctx = rewrite(image_only, embeds, ids, features)
    assert ctx.video is None and "no video in this call" in ctx.notes
    torch.testing.assert_close(compiled(embeds, ids, features), image_only(embeds, ids, features), rtol=0, atol=0)


def image_then_frames(embeds, ids, image, frames):
    """No config, no input named as a video's: an image placement and a placement of per-frame features."""
    embeds = embeds.masked_scatter((ids == OTHER)[..., None], image)
    return embeds.masked_scatter((ids == TOKEN)[..., None], frames.reshape(-1, DIM)) * 2


def two_placement_inputs():
    generator = torch.Generator().manual_seed(3)
    ids = torch.tensor([[OTHER, 1] + [TOKEN] * FRAMES * PER_FRAME + [2, 3]])
    base = torch.randn(PER_FRAME, DIM, generator=generator)
    frames = base + 0.3 * torch.randn(FRAMES, PER_FRAME, DIM, generator=generator)
    return torch.randn(1, ids.shape[1], DIM, generator=generator), ids, torch.randn(1, DIM, generator=generator), \
        frames


def test_the_placeholder_id_is_read_off_the_graph_and_an_explicit_one_settles_ambiguity():
    embeds, ids, image, frames = two_placement_inputs()
    with pytest.raises(Exception, match="set HoliTomConfig\\(video_token_id=...\\)"):
        rewrite(image_then_frames, embeds, ids, image, frames, context=lambda: GraphContext(CONFIG, None, None))
    explicit = HoliTomConfig(retain_ratio=0.5, tau=0.5, inner_layer="off", video_token_id=TOKEN)
    compiled, ctx = rewrite(image_then_frames, embeds, ids, image, frames,
                            context=lambda: GraphContext(explicit, None, None))
    assert ctx.video is not None and (ctx.video.frames, ctx.video.tokens_per_frame) == (FRAMES, PER_FRAME)
    placed = embeds.masked_scatter((ids == OTHER)[..., None], image)
    placed = placed.masked_scatter((ids == TOKEN)[..., None], frames.reshape(-1, DIM))
    out = outer_merge(frames, feature_saliency(frames), explicit)
    start = (ids == TOKEN).long().argmax(1)
    expected = splice_span(placed, start, FRAMES * PER_FRAME, out.tokens[None], out.positions[None])[0] * 2
    torch.testing.assert_close(compiled(embeds, ids, image, frames), expected, rtol=1e-5, atol=1e-5)


def frames_as_spans(embeds, ids, features):
    """Flat features (encoded before the graph), one placeholder span per frame with a timestamp token
    between (VideoLLaMA3's layout): only the ids show the frames."""
    return embeds.masked_scatter((ids == TOKEN)[..., None], features) * 2


def test_frames_as_spans_in_the_ids_give_the_grid():
    generator = torch.Generator().manual_seed(4)
    spans = sum(([7] + [TOKEN] * PER_FRAME for _ in range(FRAMES)), [])
    ids = torch.tensor([[1, 2] + spans + [2, 3]])
    base = torch.randn(PER_FRAME, DIM, generator=generator)
    grid = base + 0.3 * torch.randn(FRAMES, PER_FRAME, DIM, generator=generator)
    embeds = torch.randn(1, ids.shape[1], DIM, generator=generator)
    generic = HoliTomConfig(retain_ratio=0.5, tau=0.5, inner_layer="off")
    compiled, ctx = rewrite(frames_as_spans, embeds, ids, grid.reshape(-1, DIM),
                            context=lambda: GraphContext(generic, None, None))
    assert ctx.video is not None and ctx.video.grid_check.grid == (FRAMES, 1, PER_FRAME) and ctx.video.frame_spans
    out = outer_merge(grid, feature_saliency(grid), generic)
    placed = embeds.masked_scatter((ids == TOKEN)[..., None], grid.reshape(-1, DIM))
    expected, _ = place_by_frame(placed, ids == TOKEN, out.tokens[None], out.positions[None], FRAMES, PER_FRAME)
    torch.testing.assert_close(compiled(embeds, ids, grid.reshape(-1, DIM)), expected * 2, rtol=1e-5, atol=1e-5)
    with pytest.raises(GridError):  # one span says nothing about frames
        span_frame_grid(torch.tensor([[1] + [TOKEN] * FRAMES * PER_FRAME + [2]]), TOKEN)
