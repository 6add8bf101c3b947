"""Nemotron-H Omni: a hybrid decoder of Mamba-2 blocks (a chunked selective scan that pads the sequence
to whole chunks and keeps its last tokens as conv state), attention and MLP blocks, 1-D positions, video
marked with the image token in one span per tubelet. No layout record: the boundary, the frames (spans)
and the cache writes are read off the graph. The outer stage is checked against the model's own forward
on the merged embeddings at compact positions."""

from __future__ import annotations

import pytest
import torch

from holitom_fx import HoliTomConfig
from holitom_fx.archs import GENERIC, layout_for
from holitom_fx.ops import feature_saliency, outer_merge, place_by_frame

from . import reference_pipeline
from .sweep_models import IDENTITY, OUTER, SweepModel
from .test_backend_llava_onevision import assert_generate_is_unchanged, greedy_with_step_logits

NEMOTRON = SweepModel("NemotronH_Omni_Reasoning_V3", ["nemotron_h_omni"])
tiny, compiled = NEMOTRON.tiny, NEMOTRON.compiled

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def video_features(model, inputs) -> torch.Tensor:
    """The model's own video encoder output, ``[tokens, E]``."""
    out = model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"])
    features = out.pooler_output if getattr(out, "pooler_output", None) is not None else out
    features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features]) if isinstance(features, (list, tuple)) \
        else features
    return features.reshape(-1, features.shape[-1])


@torch.no_grad()
def reference_generate(model, inputs, cfg: HoliTomConfig, new_tokens: int):
    """HoliTom's outer stage applied by hand (feature-norm saliency; frames are the prompt's spans), the
    merged embeddings through the model's own forward at positions 0..L'-1 (compact)."""
    ids = inputs["input_ids"]
    mask = ids == model.config.image_token_id
    frames = int(((mask[0, 1:] & ~mask[0, :-1]).sum() + mask[0, 0]).item())
    features = video_features(model, inputs)
    per_frame = features.shape[0] // frames
    embeds = model.get_input_embeddings()(ids).masked_scatter(mask[..., None], features)
    grid = features.reshape(frames, per_frame, -1)
    out = outer_merge(grid, feature_saliency(grid), cfg)
    hidden, _ = place_by_frame(embeds, mask, out.tokens[None], out.positions[None], frames, per_frame)
    length = hidden.shape[1]
    return reference_pipeline.forward_greedy(model, hidden, torch.arange(length)[None],
                                             lambda step: torch.tensor([[length + step]]), new_tokens)


def test_tiny_nemotron_is_hybrid_with_no_record():
    model = tiny()
    assert layout_for(model.config) is GENERIC
    pattern = model.config.text_config.hybrid_override_pattern if hasattr(model.config, "text_config") else ""
    assert "M" in pattern and "*" in pattern


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    model, backend = compiled(IDENTITY)
    assert_generate_is_unchanged(model, tiny(), NEMOTRON.prompt)
    report = backend.last_report
    assert report is not None and report.tokens_in == report.tokens_after_outer and backend.fallbacks == 0


@torch.no_grad()
def test_outer_stage_matches_the_eager_reference_through_the_selective_scan():
    model, backend = compiled(OUTER)
    expected_steps, expected_tokens = reference_generate(tiny(), NEMOTRON.prompt, OUTER, 8)
    tokens, steps = greedy_with_step_logits(model, NEMOTRON.prompt, 8)
    torch.testing.assert_close(steps, expected_steps, rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]
    report = backend.last_report
    assert report.tokens_after_outer == round(0.5 * report.tokens_in) < report.tokens_in and backend.fallbacks == 0
