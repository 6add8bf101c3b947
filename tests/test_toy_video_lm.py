"""The backend on a video LLM it was not written for: a toy model with no layout record.

The frame grid is read off the graph (the per-frame features above the ``index_put``), the
saliency off the vision encoder's last SDPA call, the decoder layers off ``nn_module_stack``.
"""

from __future__ import annotations

import pytest
import torch

from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.archs import GENERIC, layout_for
from holitom_fx.ops import feature_saliency, outer_merge, splice_span
from holitom_fx.tiny import synthetic_clip

from . import reference_holitom as ref
from .toy_video_lm import ToyVideoLM, greedy

FRAMES, SIZE, PATCH = 5, 16, 4
TOKENS = (SIZE // PATCH) ** 2  # per frame: the toy does not pool
MERGING = HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer=2)


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def toy_inputs(model, before=3, after=4, seed=0):
    ids = [1 + i for i in range(before)] + [model.config.video_token_id] * (FRAMES * TOKENS) + [9] * after
    return torch.tensor([ids]), synthetic_clip(FRAMES, SIZE, seed)[None]


def compiled_toy(cfg):
    model = ToyVideoLM()
    backend = HoliTomBackend(cfg, compiler="eager")
    model.compile(backend=backend)
    return model, backend


def vision_saliency(model, pixels):
    """Attention received per patch in the toy's last vision layer, from its own projections."""
    vision = model.vision
    patches = torch.nn.functional.unfold(pixels.flatten(0, 1), vision.patch, stride=vision.patch)
    x = vision.embed(patches.transpose(1, 2))
    for layer in vision.layers[:-1]:
        x, _ = layer(x)
    q, k, _ = vision.layers[-1].attn.project(vision.layers[-1].norm1(x))
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    return scores.softmax(-1).mean(dim=(1, 2))


@torch.no_grad()
def reference_generate(model, ids, pixels, cfg, new_tokens, by_attention=True):
    """(prefill logits of the last position, greedy tokens): HoliTom applied by hand around the toy's layers,
    dynamic tokens ranked by the vision attention (else by feature norm)."""
    x = model.embed(ids)
    features = model.video_features(pixels)  # [T, N, E]
    mask = ids == model.config.video_token_id
    x = x.index_put((mask,), features.reshape(-1, x.shape[-1]))
    saliency = vision_saliency(model, pixels).reshape(FRAMES, TOKENS) if by_attention else feature_saliency(features)
    out = outer_merge(features, saliency, cfg)
    start = int(mask.long().argmax())
    x, _ = splice_span(x, torch.tensor([start]), FRAMES * TOKENS, out.tokens[None], out.positions[None])
    length = x.shape[1]
    cos, sin = model.rotary(torch.arange(length)[None])
    caches, previous = [], x
    for index, layer in enumerate(model.layers):
        if index == cfg.inner_layer:
            block = model.layers[index - 1]
            q, k, _ = block.attn.project(block.norm1(previous), cos, sin)
            attention = ((q[:, :, -1:] @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5).softmax(-1).mean(1)[:, 0]
            x, keeps = ref.inner_merge_loop(x, attention, [start], out.tokens.shape[0], cfg.inner_ratio)
            cos, sin = cos[:, keeps[0]], sin[:, keeps[0]]
        previous = x
        x, cache = layer(x, cos, sin, causal=True)
        caches.append(cache)
    logits = model.head(model.norm(x))[:, -1]
    tokens = [int(logits.argmax())]
    for step in range(new_tokens - 1):
        x = model.embed(torch.tensor([[tokens[-1]]]))
        cos, sin = model.rotary(torch.tensor([[length + step]]))
        for index, layer in enumerate(model.layers):
            x, caches[index] = layer(x, cos, sin, caches[index])
        tokens.append(int(model.head(model.norm(x))[0, -1].argmax()))
    return logits, tokens


def test_the_toy_has_no_record():
    assert layout_for(ToyVideoLM().config) is GENERIC


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    reference = ToyVideoLM()
    model, backend = compiled_toy(HoliTomConfig(retain_ratio=1.0, tau=1.5, inner_layer="off"))
    ids, pixels = toy_inputs(model)
    torch.testing.assert_close(model(ids, pixels)[0], reference(ids, pixels)[0], rtol=0, atol=0)
    assert greedy(model, ids, pixels, 8) == greedy(reference, ids, pixels, 8)
    report = backend.last_report
    assert (report.frames, report.tokens_in, report.tokens_after_outer) == (FRAMES, FRAMES * TOKENS, FRAMES * TOKENS)


@torch.no_grad()
def test_merging_matches_holitom_applied_by_hand():
    model, backend = compiled_toy(MERGING)
    ids, pixels = toy_inputs(model)
    expected_logits, expected = reference_generate(ToyVideoLM(), ids, pixels, MERGING, 12)
    norm_logits, _ = reference_generate(ToyVideoLM(), ids, pixels, MERGING, 1, by_attention=False)
    assert not torch.allclose(expected_logits, norm_logits, atol=1e-3)  # the saliency decides the merge here
    torch.testing.assert_close(model(ids, pixels)[0][:, -1], expected_logits, rtol=1e-4, atol=1e-4)
    assert greedy(model, ids, pixels, 12) == expected
    report = backend.last_report
    assert (report.frames, report.tokens_in) == (FRAMES, FRAMES * TOKENS)
    assert report.tokens_after_outer == round(MERGING.retain_ratio * FRAMES * TOKENS)
    assert report.inner_layer == 2 and report.saliency == "vision attention" and backend.fallbacks == 0
