"""Qwen3-Omni-MoE's thinker, a model without a layout record whose M-RoPE position ids are floats (its
temporal row is scaled by seconds per frame): generate() hands them to the prefill ``[4, B, L]``, and the
frame grid is read from their (h, w) rows as from integer ones. Identity at r=1, the reduction at r=0.5,
its deepstack features merged along (the carried tensors), no fallback."""

from __future__ import annotations

import pytest
import torch

from holitom_fx.archs import GENERIC, layout_for

from .sweep_models import IDENTITY, OUTER, SweepModel
from .test_backend_llava_onevision import assert_generate_is_unchanged, greedy_with_step_logits

OMNI = SweepModel("Qwen3OmniMoeThinkerForConditionalGeneration", ["qwen3_omni_moe_thinker"])
tiny, compiled = OMNI.tiny, OMNI.compiled

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def test_no_record():
    assert layout_for(tiny().config) is GENERIC


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    model, backend = compiled(IDENTITY)
    assert_generate_is_unchanged(model, tiny(), OMNI.prompt)
    report = backend.last_report
    assert report is not None and report.tokens_in == report.tokens_after_outer == 32 and backend.fallbacks == 0


@torch.no_grad()
def test_outer_stage_merges_the_frames_read_from_float_positions():
    model, backend = compiled(OUTER)
    tokens, steps = greedy_with_step_logits(model, OMNI.prompt, 4)
    assert len(tokens[0]) == 4 and torch.isfinite(steps).all()
    report = backend.last_report
    assert (report.frames, report.tokens_in, report.tokens_after_outer) == (2, 32, 16) and backend.fallbacks == 0
    assert report.sequence_length[:2] == (42, 26)
    prefill = next(g for g in backend.graphs if g.boundary is not None)
    assert prefill.fallback is None
