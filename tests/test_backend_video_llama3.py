"""VideoLLaMA3, a model without a layout record: 1-D positions, the video encoded before the prefill into one
flat run of patches, each frame a placeholder span of its own after a timestamp. Only the ids show the
frames (``passes/frame_grid.span_frame_grid``), re-read at each prefill. Identity, an eager reference built
from the model's own encoder and forward (both stages: the loop reference decoder), another grid with the
same token count, a padded batch."""

from __future__ import annotations

import pytest
import torch

from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.archs import GENERIC, layout_for
from holitom_fx.ops import feature_saliency, outer_merge, place_by_frame
from holitom_fx.sweep import build_tiny

from . import reference_pipeline
from .test_backend_llava_onevision import (assert_batch_equals_each_row_alone, assert_generate_is_unchanged,
                                           greedy_with_step_logits, left_pad)

VIDEO_LLAMA3 = ("VideoLlama3ForConditionalGeneration", ["video_llama_3"])
FRAMES, SIDE, MERGE, PATCH = 4, 8, 2, 16  # 4 frames of 8x8 patches, merged 2x2: 16 tokens per frame
TIMESTAMP = 9  # a text token before each frame's span, as the processor's "Time t s:"
IDENTITY = HoliTomConfig(retain_ratio=1.0, tau=1.5, inner_layer="off")
OUTER = HoliTomConfig(retain_ratio=0.5, tau=0.8, inner_layer="off")

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def tiny():
    return build_tiny(*VIDEO_LLAMA3)


def video_inputs(model, spans=FRAMES, before=(1, 2, 3), seed=0):
    """The clip (frames close to the first: some tokens static) and ``spans`` placeholder spans over its tokens."""
    generator = torch.Generator().manual_seed(seed)
    patches = torch.randn(FRAMES, SIDE * SIDE, 3 * PATCH * PATCH, generator=generator)
    pixels = (patches[:1] + 0.3 * patches).reshape(FRAMES * SIDE * SIDE, -1)
    tokens = FRAMES * SIDE * SIDE // MERGE ** 2
    span = [model.config.video_token_id] * (tokens // spans)
    ids = torch.tensor([list(before) + sum(([TIMESTAMP] + span for _ in range(spans)), []) + [5, 6, 7]])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels,
                video_grid_thw=torch.tensor([[FRAMES, SIDE, SIDE]]), video_merge_sizes=torch.tensor([MERGE]))


def compiled(cfg: HoliTomConfig):
    model = tiny()
    backend = HoliTomBackend(cfg, compiler="eager").bind(model)
    model.compile(backend=backend)
    return model, backend


def merged_prompt(model, inputs, cfg: HoliTomConfig, spans: int):
    """(embeddings after the outer stage applied by hand on ``spans`` frames with the model's own encoder, each
    merged token in its representative's frame span; the merged video's token indices)."""
    ids = inputs["input_ids"]
    features = torch.cat(model.model.get_video_features(
        pixel_values_videos=inputs["pixel_values_videos"], video_grid_thw=inputs["video_grid_thw"],
        video_merge_sizes=inputs["video_merge_sizes"]).pooler_output)
    mask = ids == model.config.video_token_id
    embeds = model.get_input_embeddings()(ids).masked_scatter(mask[..., None], features)
    grid = features.reshape(spans, -1, features.shape[-1])
    out = outer_merge(grid, feature_saliency(grid), cfg)
    hidden, source = place_by_frame(embeds, mask, out.tokens[None], out.positions[None], spans, grid.shape[1])
    return hidden, torch.nonzero(mask.gather(1, source)[0]).flatten().tolist()


@torch.no_grad()
def reference_generate(model, inputs, cfg: HoliTomConfig, spans: int, new_tokens: int):
    """(logits of every step ``[new_tokens, vocab]``, greedy tokens), outer stage only, through the model's own
    forward: compact positions, decoding after the merged length."""
    hidden, _ = merged_prompt(model, inputs, cfg, spans)
    length = hidden.shape[1]
    return reference_pipeline.forward_greedy(model, hidden, torch.arange(length)[None],
                                             lambda step: torch.tensor([[length + step]]), new_tokens)


def test_video_llama3_has_no_record():
    assert layout_for(tiny().config) is GENERIC


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    model, backend = compiled(IDENTITY)
    assert_generate_is_unchanged(model, tiny(), video_inputs(model))
    report = backend.last_report
    assert report is not None and report.frames == FRAMES and report.tokens_in == report.tokens_after_outer == 64


@torch.no_grad()
def test_generate_matches_the_eager_reference_and_a_new_grid_is_read_per_call():
    model, backend = compiled(OUTER)
    for spans in (FRAMES, 2):  # the same 64 tokens as 2 spans of 32: another grid, its own rewrite
        inputs = video_inputs(model, spans)
        expected_steps, expected_tokens = reference_generate(tiny(), inputs, OUTER, spans, 8)
        tokens, steps = greedy_with_step_logits(model, inputs, 8)
        torch.testing.assert_close(steps, expected_steps, rtol=1e-4, atol=1e-4)
        assert tokens == [expected_tokens]
        report = backend.last_report
        assert (report.frames, report.tokens_in, report.tokens_after_outer) == (spans, 64, 32)
    other_grid, _ = reference_generate(tiny(), video_inputs(model, 2), OUTER, FRAMES, 1)
    assert not torch.allclose(other_grid, expected_steps[:1], atol=1e-4)  # the grid decides the merge here
    # no vision-attention saliency without a record naming the tower's layer: the fallback, counted
    assert backend.fallbacks == 0 and report.saliency == "feature norm" and backend.saliency_fallbacks >= 1


@pytest.mark.parametrize("cfg", [OUTER, HoliTomConfig(retain_ratio=0.5, tau=0.8)], ids=["outer", "both stages"])
@torch.no_grad()
def test_batch_of_two_with_left_padding_equals_each_row_alone(cfg):
    model, backend = compiled(cfg)
    short, long = video_inputs(model, seed=0), video_inputs(model, before=(1, 2, 3, 4, 5), seed=1)
    pad = long["input_ids"].shape[1] - short["input_ids"].shape[1]
    batch = {key: torch.cat([left_pad(short[key], pad), long[key]]) for key in ("input_ids", "attention_mask")}
    batch.update({key: torch.cat([short[key], long[key]])
                  for key in ("pixel_values_videos", "video_grid_thw", "video_merge_sizes")})
    assert_batch_equals_each_row_alone(model, batch, (short, long), lambda: compiled(cfg)[0])
    report = backend.last_report
    assert report.batch == 2 and backend.fallbacks == 0
    assert (report.tokens_after_inner < report.tokens_after_outer) == cfg.inner_enabled


@torch.no_grad()
def test_inner_stage_matches_the_reference_decoder():
    """Both stages: the inner merge at layer K over the video's tokens across its frame spans."""
    cfg = HoliTomConfig(retain_ratio=0.5, tau=0.8)
    model, backend = compiled(cfg)
    reference = tiny()
    inputs = video_inputs(model)
    hidden, video_rows = merged_prompt(reference, inputs, cfg, FRAMES)
    length, expected_steps = hidden.shape[1], []
    _, expected_tokens = reference_pipeline.run_decoder(
        reference, hidden, [], 0, torch.arange(length)[None], lambda step: torch.tensor([[length + step]]), cfg, 8,
        visual=video_rows, step_logits=expected_steps)
    tokens, steps = greedy_with_step_logits(model, inputs, 8)
    torch.testing.assert_close(steps, torch.cat(expected_steps), rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]
    report = backend.last_report
    assert (report.tokens_after_outer, report.tokens_after_inner, report.inner_layer) == (32, 16, 3)
