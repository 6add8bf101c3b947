"""Sanity checks of the three config-less toy video LLMs and their by-hand HoliTom references,
without any backend: the references reduce to the plain model when nothing is merged, change it
when something is, the merge is not trivial on these clips, and each toy compiles as it runs."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.testing import CompileCounter

from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.ops import feature_saliency, outer_merge
from holitom_fx.tiny import synthetic_clip

from .toy_video_models import SIZE, TOKENS_PER_FRAME, TOYS, greedy, reference_generate, video_prompt, \
    vision_saliency

FRAMES = 5
IDENTITY = HoliTomConfig(retain_ratio=1.0, tau=1.5, inner_layer="off")
MERGING = HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer=2)

pytestmark = [pytest.mark.usefixtures("fresh_dynamo"),
              pytest.mark.parametrize("toy", TOYS, ids=[toy.__name__ for toy in TOYS])]


def toy_inputs(model, seed=0):
    """3 text tokens, the video's placeholders, 4 text tokens; a 5-frame clip ``[1, T, 3, S, S]``."""
    return video_prompt(model, FRAMES), synthetic_clip(FRAMES, SIZE, seed)[None]


def test_the_toy_has_no_config(toy):
    model = toy()
    assert not hasattr(model, "config")
    assert not any(hasattr(module, "config") for module in model.modules())


@torch.no_grad()
def test_reference_is_the_plain_model_when_nothing_is_merged(toy):
    model = toy()
    ids, pixels = toy_inputs(model)
    logits, tokens = reference_generate(model, ids, pixels, IDENTITY, 8)
    torch.testing.assert_close(logits, model(ids, pixels)[0][:, -1], rtol=0, atol=1e-5)
    assert tokens == greedy(model, ids, pixels, 8)


@torch.no_grad()
def test_merging_changes_the_output(toy):
    model = toy()
    ids, pixels = toy_inputs(model)
    logits, _ = reference_generate(model, ids, pixels, MERGING, 1)
    assert not torch.allclose(logits, model(ids, pixels)[0][:, -1], atol=1e-3)


@torch.no_grad()
def test_the_merge_is_not_trivial_on_these_clips(toy):
    model = toy()
    ids, pixels = toy_inputs(model)
    features = model.video_features(pixels)
    vision = next(module for module in model.children() if type(module).__name__ == "VisionEncoder")
    by_attention = outer_merge(features, vision_saliency(vision, pixels), MERGING)
    by_norm = outer_merge(features, feature_saliency(features), MERGING)
    budget = round(MERGING.retain_ratio * FRAMES * TOKENS_PER_FRAME)
    assert by_attention.tokens.shape[0] == budget < FRAMES * TOKENS_PER_FRAME
    assert int(by_attention.segmentation.removed) > 0  # temporal merging finds static tokens
    assert not torch.equal(by_attention.positions, by_norm.positions)  # the saliency decides which stay
    attention_logits, _ = reference_generate(model, ids, pixels, MERGING, 1)
    norm_logits, _ = reference_generate(model, ids, pixels, MERGING, 1, by_attention=False)
    assert not torch.allclose(attention_logits, norm_logits, atol=1e-3)


@torch.no_grad()
def test_the_toy_compiles_as_it_runs(toy):
    model = toy()
    ids, pixels = toy_inputs(model)
    with torch._dynamo.config.patch(capture_scalar_outputs=True):
        compiled = torch.compile(model, backend="eager")
        torch.testing.assert_close(compiled(ids, pixels)[0], model(ids, pixels)[0], rtol=0, atol=1e-5)
        assert greedy(compiled, ids, pixels, 3) == greedy(model, ids, pixels, 3)
        torch._dynamo.reset()
        counter = CompileCounter()
        torch.compile(model, backend=counter)(ids, pixels)
    assert counter.frame_count == 1  # no graph break, the split point of CatToy included


def compiled_toy(toy, cfg):
    model = toy()
    backend = HoliTomBackend(cfg, compiler="eager")
    model.compile(backend=backend)
    return model, backend


@torch.no_grad()
def test_backend_is_the_identity_at_full_retain_without_inner_stage(toy):
    reference = toy()
    model, backend = compiled_toy(toy, IDENTITY)
    ids, pixels = toy_inputs(model)
    torch.testing.assert_close(model(ids, pixels)[0], reference(ids, pixels)[0], rtol=0, atol=0)
    assert greedy(model, ids, pixels, 8) == greedy(reference, ids, pixels, 8)
    report = backend.last_report
    assert report is not None and (report.frames, report.tokens_in, report.tokens_after_outer) == (
        FRAMES, FRAMES * TOKENS_PER_FRAME, FRAMES * TOKENS_PER_FRAME)
    assert backend.fallbacks == 0


@torch.no_grad()
def test_backend_equals_holitom_applied_by_hand(toy):
    model, backend = compiled_toy(toy, MERGING)
    ids, pixels = toy_inputs(model)
    expected_steps, steps = [], []
    expected_logits, expected = reference_generate(toy(), ids, pixels, MERGING, 10, step_logits=expected_steps)
    torch.testing.assert_close(model(ids, pixels)[0][:, -1], expected_logits, rtol=1e-4, atol=1e-4)
    assert greedy(model, ids, pixels, 10, steps) == expected
    torch.testing.assert_close(torch.cat(steps), torch.cat(expected_steps), rtol=1e-4, atol=1e-4)
    report = backend.last_report
    assert (report.frames, report.tokens_in) == (FRAMES, FRAMES * TOKENS_PER_FRAME)
    assert report.tokens_after_outer == round(MERGING.retain_ratio * FRAMES * TOKENS_PER_FRAME)
    assert report.tokens_after_inner < report.tokens_after_outer and report.inner_layer == MERGING.inner_layer
    assert report.saliency == "vision attention" and backend.fallbacks == 0


ORIGINAL = HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer=2, positions="original")


@torch.no_grad()
def test_original_positions_where_the_toy_derives_them(toy):
    """The toys number their tokens with ``arange`` inside ``forward`` (rotary tables or learned absolute
    positions, from the cache length when decoding): every merged token at its representative's position."""
    model, backend = compiled_toy(toy, ORIGINAL)
    ids, pixels = toy_inputs(model)
    expected_steps, steps = [], []
    expected_logits, expected = reference_generate(toy(), ids, pixels, ORIGINAL, 10, step_logits=expected_steps)
    compact_logits, _ = reference_generate(toy(), ids, pixels, MERGING, 1)
    assert not torch.allclose(expected_logits, compact_logits, atol=1e-3)  # the positions decide here
    torch.testing.assert_close(model(ids, pixels)[0][:, -1], expected_logits, rtol=1e-4, atol=1e-4)
    assert greedy(model, ids, pixels, 10, steps) == expected
    torch.testing.assert_close(torch.cat(steps), torch.cat(expected_steps), rtol=1e-4, atol=1e-4)
    assert backend.fallbacks == 0 and backend.last_report.tokens_after_inner < backend.last_report.tokens_after_outer
