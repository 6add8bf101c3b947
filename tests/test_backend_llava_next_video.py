"""holitom_backend on an unmodified tiny LLaVA-NeXT-Video (CLIP with a CLS token, stride-2 average
pooling, no newline, Llama): the same checks as LLaVA-OneVision, from its layout record alone."""

from __future__ import annotations

import pytest
import torch

from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.tiny import tiny_llava_next_video

from .test_backend_llava_onevision import (FRAMES, IDENTITY, MERGING,
                                           assert_generate_matches_reference_with_vision_saliency,
                                           assert_padded_batch_equals_each_row_alone, compiled_model, graph_count,
                                           greedy, video_inputs)

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    reference = tiny_llava_next_video()
    model, backend = compiled_model(IDENTITY, vision=True, factory=tiny_llava_next_video)
    inputs = video_inputs(model)
    torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=0, atol=0)
    assert greedy(model, inputs, 8) == greedy(reference, inputs, 8)
    report = backend.last_report
    assert report.tokens_in == report.tokens_after_outer == report.tokens_after_inner == FRAMES * 4


@torch.no_grad()
def test_generate_matches_the_eager_reference_pipeline_with_vision_saliency():
    backend = assert_generate_matches_reference_with_vision_saliency(tiny_llava_next_video)
    report = backend.last_report
    assert (report.tokens_in, report.tokens_after_outer) == (FRAMES * 4, round(MERGING.retain_ratio * FRAMES * 4))
    assert report.inner_layer == 3 and report.saliency == "vision attention (encoder graph)"
    assert backend.fallbacks == 0 and backend.saliency_fallbacks == 0


@torch.no_grad()
def test_batch_of_two_with_left_padding_equals_each_row_alone():
    assert_padded_batch_equals_each_row_alone(HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer="off"),
                                              vision=True, factory=tiny_llava_next_video)


@torch.no_grad()
def test_no_added_graph_breaks_and_no_recompilation():
    plain = graph_count(tiny_llava_next_video, lambda m: (lambda gm, _: gm.forward), video_inputs)
    holitom = graph_count(tiny_llava_next_video, lambda m: HoliTomBackend(MERGING, compiler="eager").bind(m),
                          video_inputs)
    assert holitom[0] == plain[0]  # the vision tower's graph and the prefill/decode graphs, no more
    assert holitom[1] == holitom[0]
