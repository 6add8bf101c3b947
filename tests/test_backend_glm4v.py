"""GLM-4.1V, a model without a layout record that marks video frames with its *image* token: the video's
placement is found by dataflow (its features come from the ``video`` encoder output), each temporal patch
is a span of its own (read from the ``[4, B, L]`` positions). Identity, an eager reference built from the
model's own encoder, ``get_rope_index`` and forward (both stages: the loop reference decoder), a padded
batch, graph counts."""

from __future__ import annotations

import pytest
import torch
from transformers.models.glm4v import modeling_glm4v

from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.archs import GENERIC, layout_for

from . import reference_pipeline
from .sweep_models import IDENTITY, OUTER, SweepModel
from .test_backend_llava_onevision import (assert_batch_equals_each_row_alone, assert_generate_is_unchanged, graph_count,
                                           greedy_with_step_logits, left_pad)

GLM = SweepModel("Glm4vForConditionalGeneration", ["glm4v"])
tiny, compiled = GLM.tiny, GLM.compiled

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def glm_inputs():
    return GLM.prompt


def inputs_for(model):
    return GLM.prompt


@torch.no_grad()
def reference_generate(model, inputs, cfg: HoliTomConfig, new_tokens: int, renumber: bool = False):
    """(logits of every step ``[new_tokens, vocab]``, greedy tokens), outer stage only, through the model's own
    forward: merged tokens at their representatives' (t, h, w) (``renumber``: at 0..L'-1 instead, to show
    positions matter), decoding after the prompt's last position."""
    hidden, merged, _, last = reference_pipeline.mrope_merged_prompt(model, inputs, cfg,
                                                                      model.config.image_token_id)
    if renumber:
        merged = torch.arange(hidden.shape[1]).expand(3, 1, -1)
    return reference_pipeline.forward_greedy(model, hidden, merged, lambda step: last + 1 + step, new_tokens)


def test_glm_has_no_record_and_marks_video_with_the_image_token():
    model = tiny()
    assert layout_for(model.config) is GENERIC
    ids = inputs_for(model)["input_ids"]
    assert (ids == model.config.image_token_id).any() and not (ids == model.config.video_token_id).any()


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    model, backend = compiled(IDENTITY)
    assert_generate_is_unchanged(model, tiny(), inputs_for(model))
    report = backend.last_report
    assert report is not None and report.tokens_in == report.tokens_after_outer == 32 and backend.fallbacks == 0


@torch.no_grad()
def test_generate_matches_the_eager_reference_at_representative_positions():
    model, backend = compiled(OUTER)
    inputs = inputs_for(model)
    expected_steps, expected_tokens = reference_generate(tiny(), inputs, OUTER, 8)
    renumbered, _ = reference_generate(tiny(), inputs, OUTER, 1, renumber=True)
    assert not torch.allclose(expected_steps[:1], renumbered, atol=1e-4)  # the positions decide here
    tokens, steps = greedy_with_step_logits(model, inputs, 8)
    torch.testing.assert_close(steps, expected_steps, rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]
    report = backend.last_report
    assert (report.frames, report.tokens_in, report.tokens_after_outer) == (2, 32, 16) and backend.fallbacks == 0
    # no vision-attention saliency without a record naming the tower's layer: the fallback, counted
    assert report.saliency == "feature norm" and backend.saliency_fallbacks >= 1


@torch.no_grad()
def test_no_added_graph_breaks_and_no_recompilation():
    plain = graph_count(tiny, lambda m: (lambda gm, _: gm.forward), inputs_for, vision_tower=None)
    holitom = graph_count(tiny, lambda m: HoliTomBackend(OUTER, compiler="eager").bind(m), inputs_for,
                          vision_tower=None)
    assert holitom[0] == plain[0] and holitom[1] == holitom[0]


@pytest.mark.parametrize("cfg", [OUTER, HoliTomConfig(retain_ratio=0.5, tau=0.8)], ids=["outer", "both stages"])
@torch.no_grad()
def test_batch_of_two_with_left_padding_equals_each_row_alone(cfg):
    model, backend = compiled(cfg)
    short = glm_inputs()
    extra = torch.tensor([[1, 2]])  # two more text tokens in front: the rows differ in length
    long = dict(short, input_ids=torch.cat([extra, short["input_ids"]], 1),
                attention_mask=torch.cat([torch.ones_like(extra), short["attention_mask"]], 1),
                mm_token_type_ids=torch.cat([torch.zeros_like(extra), short["mm_token_type_ids"]], 1),
                pixel_values_videos=short["pixel_values_videos"].flip(0))  # another clip
    batch = {key: torch.cat([left_pad(short[key], extra.shape[1]), long[key]])
             for key in ("input_ids", "attention_mask", "mm_token_type_ids")}
    batch.update({key: torch.cat([short[key], long[key]]) for key in ("pixel_values_videos", "video_grid_thw")})
    assert_batch_equals_each_row_alone(model, batch, (short, long), lambda: compiled(cfg)[0])
    report = backend.last_report
    assert report.batch == 2 and backend.fallbacks == 0
    assert (report.tokens_after_inner < report.tokens_after_outer) == cfg.inner_enabled


@torch.no_grad()
def test_inner_stage_matches_the_reference_decoder():
    """Both stages: the inner merge at layer K over the video's tokens across its frame spans, layer K-1's
    attention from its own q/k with GLM's partial rotary, against the loop reference."""
    cfg = HoliTomConfig(retain_ratio=0.5, tau=0.8)
    model, backend = compiled(cfg)
    reference = tiny()
    hidden, merged, video_rows, last = reference_pipeline.mrope_merged_prompt(
        reference, glm_inputs(), cfg, reference.config.image_token_id)
    expected_steps = []
    _, expected_tokens = reference_pipeline.run_decoder(
        reference, hidden, [], 0, merged, lambda step: last + 1 + step, cfg, 8, visual=video_rows,
        step_logits=expected_steps, apply_rotary=modeling_glm4v.apply_rotary_pos_emb)
    tokens, steps = greedy_with_step_logits(model, glm_inputs(), 8)
    torch.testing.assert_close(steps, torch.cat(expected_steps), rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]
    report = backend.last_report
    assert (report.tokens_after_outer, report.tokens_after_inner, report.inner_layer) == (16, 8, 3)
