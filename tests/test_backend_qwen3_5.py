"""Qwen3.5, a hybrid decoder (gated delta-net linear attention in three layers of four, softmax attention in
the fourth) under Qwen3-VL's layout record. Its chunked linear attention pads the sequence to whole chunks and
unrolls its loop over them at trace time; after the merge the pad keeps that total
(``SequenceLengthPass``), so the scan and the recurrent state see the merged tokens and zeros only. The
inner stage ranks by the nearest softmax-attention layer at or below K-1: in the tiny model there is none,
so it is skipped (said), and the outer stage is checked against the model's own forward."""

from __future__ import annotations

import pytest
import torch

from holitom_fx import HoliTomConfig
from holitom_fx.archs import layout_for

from . import reference_pipeline
from .sweep_models import IDENTITY, OUTER, SweepModel
from .test_backend_llava_onevision import assert_generate_is_unchanged, greedy_with_step_logits

QWEN3_5 = SweepModel("Qwen3_5ForConditionalGeneration", ["qwen3_5"])
tiny, compiled = QWEN3_5.tiny, QWEN3_5.compiled

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@torch.no_grad()
def reference_generate(model, inputs, cfg: HoliTomConfig, new_tokens: int):
    """(logits of every step, greedy tokens): HoliTom's outer stage applied by hand to the model's own video
    features (feature-norm saliency), merged tokens at their representatives' (t, h, w), through the model's
    own forward."""
    hidden, merged, _, last = reference_pipeline.mrope_merged_prompt(model, inputs, cfg, model.config.video_token_id)
    return reference_pipeline.forward_greedy(model, hidden, merged, lambda step: last + 1 + step, new_tokens)


def test_tiny_qwen3_5_is_hybrid():
    model = tiny()
    assert "qwen3_5" in layout_for(model.config).model_types
    assert model.config.text_config.layer_types == ["linear_attention"] * 3 + ["full_attention"]


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    model, backend = compiled(IDENTITY)
    assert_generate_is_unchanged(model, tiny(), QWEN3_5.prompt)
    report = backend.last_report
    assert report is not None and report.tokens_in == report.tokens_after_outer == 32 and backend.fallbacks == 0


@torch.no_grad()
def test_outer_stage_matches_the_eager_reference_through_linear_attention():
    model, backend = compiled(OUTER)
    expected_steps, expected_tokens = reference_generate(tiny(), QWEN3_5.prompt, OUTER, 8)
    tokens, steps = greedy_with_step_logits(model, QWEN3_5.prompt, 8)
    torch.testing.assert_close(steps, expected_steps, rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]
    report = backend.last_report
    assert (report.tokens_in, report.tokens_after_outer) == (32, 16) and backend.fallbacks == 0


@torch.no_grad()
def test_inner_stage_without_a_softmax_layer_below_k_is_skipped_and_said():
    model, backend = compiled(HoliTomConfig(retain_ratio=0.5, tau=0.8))
    greedy_with_step_logits(model, QWEN3_5.prompt, 2)
    report = backend.last_report
    assert report.tokens_after_outer == report.tokens_after_inner == 16 and backend.fallbacks == 0
    assert any("no decoder layer below layer 3 has softmax attention" in note
               for record in backend.graphs for note in record.notes)
