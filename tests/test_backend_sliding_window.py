"""Gemma 4: three sliding-window layers and one full-attention layer, the sliding ones cached by transformers'
``DynamicSlidingWindowLayer``, whose token count is a Python int Dynamo replays at the traced (unmerged)
length. The merge applies when the merged prompt still fills every window (``SlidingWindowPass``): the
decode masks then agree with the keys the cache holds. The tiny model's window is set here (16, and 44 =
L' + 1, the largest that fits the 43-token merged prompt); a window between the merged and the unmerged
length (60) is refused, said, and generation equals the uncompiled model's. The outer stage is checked
against the model's own forward on the merged embeddings (per-layer inputs gathered alike) at compact
positions, decoding 8 tokens on its own cache."""

from __future__ import annotations

import functools

import pytest
import torch
import transformers

from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.ops import feature_saliency, outer_merge, place_by_frame
from holitom_fx.sweep import SEED, build_inputs, config_class, tiny_config

from .sweep_models import IDENTITY, OUTER
from .test_backend_llava_onevision import assert_generate_is_unchanged, greedy_with_step_logits

NAME, MODEL_TYPES = "Gemma4ForConditionalGeneration", ["gemma4"]
NEW_TOKENS = 8

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def tiny(window: int):
    """The sweep's tiny Gemma 4 (the same random weights every time) with sliding windows of ``window``."""
    config = tiny_config(config_class(NAME, MODEL_TYPES))
    config.get_text_config().sliding_window = window
    config._attn_implementation = "sdpa"
    torch.manual_seed(SEED)
    return getattr(transformers, NAME)(config).eval().float()


@functools.cache
def prompt() -> dict:
    """The sweep's video prompt: 75 tokens, the video in 4 frame spans of 16 (the window does not change it)."""
    return build_inputs(tiny(16))[0]


def compiled(window: int, config: HoliTomConfig):
    model = tiny(window)
    backend = HoliTomBackend(config, compiler="eager").bind(model)
    model.compile(backend=backend)
    return model, backend


@torch.no_grad()
def reference_generate(model, inputs, cfg: HoliTomConfig, new_tokens: int):
    """(logits of every step, greedy tokens): HoliTom's outer stage applied by hand to the model's own video
    features (feature-norm saliency, frames are the prompt's spans), the merged embeddings and the per-layer
    inputs of the tokens they stand for through the model's own forward at compact positions, then decoding
    on its cache."""
    inner = model.model
    ids = inputs["input_ids"]
    mask = ids == model.config.video_token_id
    frames = int(((mask[0, 1:] & ~mask[0, :-1]).sum() + mask[0, 0]).item())
    features = torch.cat(inner.get_video_features(inputs["pixel_values_videos"], inputs["video_position_ids"],
                                                  num_frames_per_video=inputs["num_frames_per_video"]).pooler_output)
    per_frame = features.shape[0] // frames
    pad = model.config.text_config.pad_token_id
    text_ids = torch.where(mask, pad, ids)  # as the model embeds its multimodal placeholders
    embeds = inner.get_input_embeddings()(text_ids)
    pad_embedding = inner.language_model.embed_tokens.weight[pad]
    per_layer = inner.language_model.get_per_layer_inputs(text_ids, torch.where(mask[..., None], pad_embedding, embeds))
    embeds = embeds.masked_scatter(mask[..., None], features)
    grid = features.reshape(frames, per_frame, -1)
    out = outer_merge(grid, feature_saliency(grid), cfg)
    hidden, source = place_by_frame(embeds, mask, out.tokens[None], out.positions[None], frames, per_frame)
    per_layer = per_layer.gather(1, source[..., None, None].expand(-1, -1, *per_layer.shape[2:]))
    length = hidden.shape[1]
    step = model(inputs_embeds=hidden, per_layer_inputs=per_layer, position_ids=torch.arange(length)[None],
                 attention_mask=torch.ones(1, length, dtype=torch.long), use_cache=True)
    steps = [step.logits[:, -1]]
    tokens = [int(steps[0][0].argmax())]
    for index in range(new_tokens - 1):
        step = model(input_ids=torch.tensor([[tokens[-1]]]), position_ids=torch.tensor([[length + index]]),
                     attention_mask=torch.ones(1, length + index + 1, dtype=torch.long), cache=step.past_key_values,
                     use_cache=True)
        steps.append(step.logits[:, -1])
        tokens.append(int(steps[-1][0].argmax()))
    return torch.cat(steps), tokens


def test_tiny_gemma4_has_sliding_layers():
    text = tiny(16).config.get_text_config()
    assert text.layer_types == ["sliding_attention"] * 3 + ["full_attention"] and text.sliding_window == 16
    assert prompt()["input_ids"].shape[1] == 75


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    model, backend = compiled(16, IDENTITY)
    assert_generate_is_unchanged(model, tiny(16), prompt(), new_tokens=NEW_TOKENS)
    report = backend.last_report
    assert report is not None and report.tokens_in == report.tokens_after_outer == 64 and backend.fallbacks == 0


@torch.no_grad()
@pytest.mark.parametrize("window", [16, 44])  # inside the 43-token merged prompt; 44 = L' + 1, the largest that fits
def test_outer_stage_matches_the_eager_reference_through_sliding_windows(window):
    model, backend = compiled(window, OUTER)
    expected_steps, expected_tokens = reference_generate(tiny(window), prompt(), OUTER, NEW_TOKENS)
    tokens, steps = greedy_with_step_logits(model, prompt(), NEW_TOKENS)
    torch.testing.assert_close(steps, expected_steps, rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens] and len(expected_tokens) == NEW_TOKENS
    report = backend.last_report
    assert (report.tokens_in, report.tokens_after_outer) == (64, 32) and report.sequence_length == (75, 43, 43)
    assert backend.fallbacks == 0


@torch.no_grad()
def test_a_window_longer_than_the_merged_prompt_is_refused_with_the_counts():
    """Window 60 lies between the merged (43) and the unmerged (75) prompt: the first decode step would size
    its window mask from the replayed count (75) against 43 cached keys. Refused, said, counted; generation
    equals the uncompiled model's."""
    model, backend = compiled(60, OUTER)
    assert_generate_is_unchanged(model, tiny(60), prompt(), new_tokens=NEW_TOKENS)
    refusals = [g.fallback for g in backend.graphs if g.fallback]
    assert backend.last_report is None and backend.fallbacks == len(refusals) == 1
    assert "leaves 43 tokens to a sliding-window layer of window 60" in refusals[0]
    assert "(43 < 59 = window - 1)" in refusals[0]
