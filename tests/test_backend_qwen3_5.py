"""Qwen3.5, a hybrid decoder (gated delta-net linear attention in three layers of four, softmax attention in
the fourth) under Qwen3-VL's layout record. Its chunked linear attention pads the sequence to whole chunks and
unrolls its loop over them at trace time; after the merge the pad keeps that total
(``SequenceLengthPass``), so the scan and the recurrent state see the merged tokens and zeros only. The
inner stage ranks by the nearest softmax-attention layer at or below K-1: in the tiny model there is none,
so it is skipped (said), and the outer stage is checked against the model's own forward."""

from __future__ import annotations

import functools

import pytest
import torch

from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.archs import layout_for
from holitom_fx.ops import feature_saliency, outer_merge, place_by_frame
from holitom_fx.sweep import build_inputs, build_tiny

from . import reference_pipeline
from .test_backend_llava_onevision import assert_generate_is_unchanged, greedy_with_step_logits

QWEN3_5 = ("Qwen3_5ForConditionalGeneration", ["qwen3_5"])
IDENTITY = HoliTomConfig(retain_ratio=1.0, tau=1.5, inner_layer="off")
OUTER = HoliTomConfig(retain_ratio=0.5, tau=0.8, inner_layer="off")

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def tiny():
    return build_tiny(*QWEN3_5)


@functools.lru_cache(maxsize=1)
def prompt():
    """The sweep's prompt (a span per temporal patch, as Qwen3.5's processor writes it)."""
    return build_inputs(tiny())[0]


def compiled(cfg: HoliTomConfig):
    model = tiny()
    backend = HoliTomBackend(cfg, compiler="eager").bind(model)
    model.compile(backend=backend)
    return model, backend


@torch.no_grad()
def reference_generate(model, inputs, cfg: HoliTomConfig, new_tokens: int):
    """(logits of every step, greedy tokens): HoliTom's outer stage applied by hand to the model's own video
    features (feature-norm saliency), merged tokens at their representatives' (t, h, w), through the model's
    own forward."""
    inner = model.model
    ids = inputs["input_ids"]
    features = torch.cat(inner.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                                  video_grid_thw=inputs["video_grid_thw"]).pooler_output)
    mask = ids == model.config.video_token_id
    embeds = inner.get_input_embeddings()(ids).masked_scatter(mask[..., None], features)
    positions, _ = inner.get_rope_index(ids, mm_token_type_ids=inputs["mm_token_type_ids"],
                                        video_grid_thw=inputs["video_grid_thw"], attention_mask=inputs["attention_mask"])
    t, h, w = inputs["video_grid_thw"][0].tolist()
    per_frame = h * w // model.config.vision_config.spatial_merge_size ** 2
    grid = features.reshape(t, per_frame, -1)
    out = outer_merge(grid, feature_saliency(grid), cfg)
    hidden, source = place_by_frame(embeds, mask, out.tokens[None], out.positions[None], t, per_frame)
    merged = positions.gather(-1, source.expand(positions.shape[0], *source.shape))
    last = positions[..., -1:]
    return reference_pipeline.forward_greedy(model, hidden, merged, lambda step: last + 1 + step, new_tokens)


def test_tiny_qwen3_5_is_hybrid():
    model = tiny()
    assert "qwen3_5" in layout_for(model.config).model_types
    assert model.config.text_config.layer_types == ["linear_attention"] * 3 + ["full_attention"]


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    model, backend = compiled(IDENTITY)
    assert_generate_is_unchanged(model, tiny(), prompt())
    report = backend.last_report
    assert report is not None and report.tokens_in == report.tokens_after_outer == 32 and backend.fallbacks == 0


@torch.no_grad()
def test_outer_stage_matches_the_eager_reference_through_linear_attention():
    model, backend = compiled(OUTER)
    expected_steps, expected_tokens = reference_generate(tiny(), prompt(), OUTER, 8)
    tokens, steps = greedy_with_step_logits(model, prompt(), 8)
    torch.testing.assert_close(steps, expected_steps, rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]
    report = backend.last_report
    assert (report.tokens_in, report.tokens_after_outer) == (32, 16) and backend.fallbacks == 0


@torch.no_grad()
def test_inner_stage_without_a_softmax_layer_below_k_is_skipped_and_said():
    model, backend = compiled(HoliTomConfig(retain_ratio=0.5, tau=0.8))
    greedy_with_step_logits(model, prompt(), 2)
    report = backend.last_report
    assert report.tokens_after_outer == report.tokens_after_inner == 16 and backend.fallbacks == 0
    assert any("no decoder layer below layer 3 has softmax attention" in note
               for record in backend.graphs for note in record.notes)
