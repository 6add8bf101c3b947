"""Decoders with learned sparse attention (an indexer picks the keys each query attends to).

GLM-5-Next: one flat video span marked with its image token between video start/end markers, 1-D (NoPE)
positions, a residual of several streams per token (hyper-connections, ``[B, L, N, E]``), linear-attention
layers with chunk pads and an indexer whose pooled candidates are a boolean-mask index (a data-dependent size)
and whose indices are clamped to ``L - 1``. Identity at r=1, the outer stage against an eager reference built
from the model's own encoder and forward, and both stages applied.

Qwen4-Exp: its indexer loops over every query and branches on a data-dependent count, which Dynamo cannot
trace: the graph that scatters the video ends before any decoder layer, and the backend says exactly why."""

from __future__ import annotations

import pytest
import torch

from holitom_fx import HoliTomConfig
from holitom_fx.archs import spatial_merge
from holitom_fx.ops import feature_saliency, outer_merge, splice_span

from . import reference_pipeline
from .sweep_models import IDENTITY, OUTER, SweepModel
from .test_backend_llava_onevision import assert_generate_is_unchanged, greedy_with_step_logits

GLM5 = SweepModel("Glm5NextForConditionalGeneration", ["glm5_next"])
QWEN4 = SweepModel("Qwen4ExpForConditionalGeneration", ["qwen4_exp"])
BOTH_STAGES = HoliTomConfig(retain_ratio=0.5, tau=0.8)

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@torch.no_grad()
def test_glm5_next_identity_at_full_retain_without_inner_stage():
    model, backend = GLM5.compiled(IDENTITY)
    assert_generate_is_unchanged(model, GLM5.tiny(), GLM5.prompt)
    report = backend.last_report
    assert report is not None and backend.fallbacks == 0
    assert report.frames == 2 and report.tokens_in == report.tokens_after_outer == 32


@torch.no_grad()
def glm5_merged_prompt(model, inputs, cfg):
    """GLM-5-Next's prompt after the outer stage applied by hand: its own encoder's features as t frames of
    (h/m)*(w/m), feature-norm saliency, the merged tokens spliced in place of the image-token span that lies
    inside the video markers."""
    ids = inputs["input_ids"]
    config = model.config
    features = torch.cat(model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                                        video_grid_thw=inputs["video_grid_thw"]).pooler_output)
    inside = (ids == config.video_start_token_id).cumsum(-1) > (ids == config.video_end_token_id).cumsum(-1)
    mask = (ids == config.image_token_id) & inside
    assert int(mask.sum()) == features.shape[0]
    embeds = model.get_input_embeddings()(ids).masked_scatter(mask[..., None], features)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    m_h, m_w = spatial_merge(config)
    grid = features.reshape(t, (h // m_h) * (w // m_w), -1)
    out = outer_merge(grid, feature_saliency(grid), cfg)
    start = int(torch.nonzero(mask[0])[0])
    hidden, _ = splice_span(embeds, torch.tensor([start]), features.shape[0], out.tokens[None],
                            out.positions[None])
    return hidden


@torch.no_grad()
def test_glm5_next_generate_matches_the_eager_reference():
    """The merged prefill and 6 decode steps equal the model's own forward on the prompt merged by hand: the
    linear-attention chunk pads, the indexer's clamp to the sequence and its pooled candidates all follow L'."""
    model, backend = GLM5.compiled(OUTER)
    inputs = GLM5.prompt
    hidden = glm5_merged_prompt(GLM5.tiny(), inputs, OUTER)
    length = hidden.shape[1]
    expected_steps, expected_tokens = reference_pipeline.forward_greedy(
        GLM5.tiny(), hidden, torch.arange(length)[None], lambda step: torch.tensor([[length + step]]), 6)
    tokens, steps = greedy_with_step_logits(model, inputs, 6)
    torch.testing.assert_close(steps, expected_steps, rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]
    report = backend.last_report
    assert (report.frames, report.tokens_in, report.tokens_after_outer) == (2, 32, 16) and backend.fallbacks == 0
    assert report.sequence_length == (42, 26, 26)


@torch.no_grad()
def test_glm5_next_merges_both_stages_on_its_streams():
    """The inner stage folds the ``[B, L, N, E]`` residual streams of layer K's input: merged, no fallback, and
    the prefill's logits differ from the outer stage's alone (layers K.. ran on L'' tokens)."""
    model, backend = GLM5.compiled(BOTH_STAGES)
    _, steps = greedy_with_step_logits(model, GLM5.prompt, 2)
    report = backend.last_report
    assert report is not None and backend.fallbacks == 0
    assert (report.tokens_in, report.tokens_after_outer, report.tokens_after_inner) == (32, 16, 8)
    assert report.sequence_length == (42, 26, 18) and report.inner_layer == 3
    outer_only, _ = GLM5.compiled(OUTER)
    _, outer_steps = greedy_with_step_logits(outer_only, GLM5.prompt, 2)
    assert torch.isfinite(steps).all() and not torch.allclose(steps[0], outer_steps[0], rtol=0, atol=1e-4)


@torch.no_grad()
def test_qwen4_exp_is_left_unmerged_with_dynamos_reason(caplog):
    """Qwen4-Exp's indexer branches on a data-dependent count inside a loop over the queries: Dynamo breaks the
    graph there and runs the decoder in other graphs. HoliTom leaves the prompt unmerged (the model's own logits)
    and says why, with Dynamo's reason and the line it broke at."""
    model, backend = QWEN4.compiled(OUTER)
    with caplog.at_level("INFO", logger="holitom_fx"):
        _, steps = greedy_with_step_logits(model, QWEN4.prompt, 2)
    assert backend.last_report is None
    notes = [note for record in backend.graphs for note in record.notes
             if note.startswith("no decoder layer runs in the graph that scatters the video")]
    assert notes and "data-dependent expression" in notes[0] and "branches on a data-dependent size" in notes[0]
    assert "modeling_qwen4_exp.py:" in notes[0]
    assert any("branches on a data-dependent size" in record.getMessage() for record in caplog.records)
    _, expected = greedy_with_step_logits(QWEN4.tiny(), QWEN4.prompt, 2)
    torch.testing.assert_close(steps, expected, rtol=0, atol=1e-5)
