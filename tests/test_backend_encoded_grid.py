"""Models that flatten a video into one placeholder span with 1-D positions (EXAONE-4.5, HyperCLOVAX-Vision-V2,
Dots3-Note, Muse-Glimmer, Muse-Spark): generate() encodes the video before the prefill and drops
its grid, so the prefill graph holds no frame structure; the grid (t, h, w) the encoder was called with is
kept by the bound backend (``holitom_fx.encoded_grid``) and each span read as t frames of (h/m)*(w/m) tokens
(``passes/frame_grid.encoded_frame_grid``), re-read per prefill. Identity at r=1 for each, the outer stage
against an eager reference built from EXAONE-4.5's own encoder and forward, a stale grid refused, and
Kimi-K2.5 (its encoder pools the frames) merged as a one-frame video."""

from __future__ import annotations

import pytest
import torch

from holitom_fx import HoliTomConfig
from holitom_fx.archs import GENERIC, layout_for, spatial_merge
from holitom_fx.ops import feature_saliency, outer_merge, splice_span

from . import reference_pipeline
from .sweep_models import IDENTITY, OUTER, SweepModel
from .test_backend_llava_onevision import assert_generate_is_unchanged, greedy_with_step_logits

FLAT = {name: SweepModel(name, [model_type]) for name, model_type in [
    ("Exaone4_5_ForConditionalGeneration", "exaone4_5"),
    ("HyperCLOVAXVisionV2ForConditionalGeneration", "hyperclovax_vision_v2"),
    ("Dots3NoteForConditionalGeneration", "dots3_note"),
    ("MuseGlimmerForConditionalGeneration", "muse_glimmer"),
    ("MuseSparkForConditionalGeneration", "muse_spark"),
]}
EXAONE = FLAT["Exaone4_5_ForConditionalGeneration"]
KIMI = SweepModel("Kimi_K25ForConditionalGeneration", ["kimi_k25"])

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@pytest.mark.parametrize("name", list(FLAT))
@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage(name):
    entry = FLAT[name]
    model, backend = entry.compiled(IDENTITY)
    assert layout_for(model.config) is GENERIC
    assert_generate_is_unchanged(model, entry.tiny(), entry.prompt)
    report = backend.last_report
    t, h, w = entry.prompt["video_grid_thw"][0].tolist()
    assert report is not None and backend.fallbacks == 0
    assert report.frames == t and report.tokens_in == report.tokens_after_outer == t * h * w // 4


@torch.no_grad()
def merged_prompt(model, inputs, cfg, frames=None):
    """The prompt after the outer stage applied by hand: the model's own encoder's features as t frames of
    (h/m)*(w/m) (or ``frames`` frames), feature-norm saliency, the merged tokens spliced in place of the span;
    and the original position of each token ``[1, L']`` (a merged token's: its representative's)."""
    ids = inputs["input_ids"]
    features = torch.cat(model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                                        video_grid_thw=inputs["video_grid_thw"]).pooler_output)
    mask = ids == model.config.video_token_id
    embeds = model.get_input_embeddings()(ids).masked_scatter(mask[..., None], features)
    t, h, w = inputs["video_grid_thw"][0].tolist()
    m_h, m_w = spatial_merge(model.config)
    grid = features.reshape(t, (h // m_h) * (w // m_w), -1) if frames is None else features.reshape(frames, -1,
                                                                                                    features.shape[-1])
    out = outer_merge(grid, feature_saliency(grid), cfg)
    start = int(torch.nonzero(mask[0])[0])
    return splice_span(embeds, torch.tensor([start]), features.shape[0], out.tokens[None], out.positions[None])


OUTER_ORIGINAL = HoliTomConfig(retain_ratio=0.5, tau=0.8, inner_layer="off", positions="original")


def with_text_before(inputs: dict, ids: list[int]) -> dict:
    """The prompt with text tokens ``ids`` before it (a prompt of another length: a prefill Dynamo traces with a
    symbolic length, specialized by the backend)."""
    before = torch.tensor([ids], dtype=inputs["input_ids"].dtype)
    return {**inputs, "input_ids": torch.cat([before, inputs["input_ids"]], 1),
            "attention_mask": torch.cat([torch.ones_like(before), inputs["attention_mask"]], 1)}


@pytest.mark.parametrize("cfg", [OUTER, OUTER_ORIGINAL], ids=["compact", "original"])
@torch.no_grad()
def test_exaone_generate_matches_the_eager_reference(cfg):
    """The merged prompt and every decode step equal the reference at the config's positions: compact, the
    prompt at 0..L'-1 and decoding at L' + step; original, each token at its representative's position and
    decoding at L + step. EXAONE-4.5 derives its decode positions from its first cache layer's count, a
    sliding-window layer whose count Dynamo replays at the traced L (docs/design.md, limits): the decode graph
    shifts them by what the backend reads off that count (passes/decode_positions.py). Then a prompt of
    another length, on the same compiled model."""
    model, backend = EXAONE.compiled(cfg)
    for inputs, lengths in ((EXAONE.prompt, (40, 24)), (with_text_before(EXAONE.prompt, [5, 6, 7]), (43, 27))):
        hidden, source = merged_prompt(EXAONE.tiny(), inputs, cfg)
        length, original = hidden.shape[1], inputs["input_ids"].shape[1]
        positions, start = (torch.arange(length)[None], length) if cfg.positions == "compact" else (source, original)
        expected_steps, expected_tokens = reference_pipeline.forward_greedy(
            EXAONE.tiny(), hidden, positions, lambda step: torch.tensor([[start + step]]), 6)
        tokens, steps = greedy_with_step_logits(model, inputs, 6)
        torch.testing.assert_close(steps, expected_steps, rtol=1e-4, atol=1e-4)
        assert tokens == [expected_tokens]
        report = backend.last_report
        assert (report.frames, report.tokens_in, report.tokens_after_outer) == (2, 32, 16)
        assert report.sequence_length[:2] == lengths and backend.fallbacks == 0


@torch.no_grad()
def test_a_prefill_without_its_own_encoder_call_is_not_merged():
    """The grid is consumed by the prefill that used it: features passed in without an encoder call (no grid
    kept) leave the prefill unmerged, said, with the model's own logits."""
    model, backend = EXAONE.compiled(OUTER)
    inputs = EXAONE.prompt
    greedy_with_step_logits(model, inputs, 2)  # merged, consumes the grid
    assert backend._encoded.last is None
    features = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                              video_grid_thw=inputs["video_grid_thw"])
    backend._encoded.take()  # as if encoded elsewhere
    backend.last_report = None
    plain = {k: v for k, v in inputs.items() if k not in ("pixel_values_videos", "video_grid_thw")}
    out = model(**plain, mm_encoder_outputs={"video": features})
    expected = EXAONE.tiny()(**plain, mm_encoder_outputs={"video": features})
    torch.testing.assert_close(out.logits, expected.logits, rtol=0, atol=1e-5)
    assert backend.last_report is None


@torch.no_grad()
def test_kimi_k25_merges_its_pooled_video_as_one_frame():
    """Kimi-K2.5's encoder pools the video's temporal patches into one frame of 16 tokens: HoliTom merges it as a
    one-frame video (spatial merging: the saliency top half at r = 0.5), equal to the outer stage by hand."""
    model, backend = KIMI.compiled(OUTER)
    tokens, steps = greedy_with_step_logits(model, KIMI.prompt, 4)
    report = backend.last_report
    assert report is not None and backend.fallbacks == 0
    assert (report.frames, report.tokens_in, report.tokens_after_outer) == (1, 16, 8)

    hidden, _ = merged_prompt(KIMI.tiny(), KIMI.prompt, OUTER, frames=1)
    length = hidden.shape[1]
    expected_steps, expected_tokens = reference_pipeline.forward_greedy(
        KIMI.tiny(), hidden, torch.arange(length)[None], lambda step: torch.tensor([[length + step]]), 4)
    torch.testing.assert_close(steps, expected_steps, rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]
