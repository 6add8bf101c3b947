"""Several models compiled in one process, with Dynamo's default ``recompile_limit`` (8): transformers' models
share the code object of their forward wrapper, so by default one model's compilations count against the
others' limit, and a model compiled after a few others runs uncompiled, where HoliTom sees nothing.
``holitom_fx.compile`` compiles each model in a Dynamo region of its own (``isolate_recompiles``) and every
model merges; a model compiled by hand that Dynamo runs eagerly is said (once per model) and counted."""

from __future__ import annotations

import logging

import pytest
import torch
import torch._dynamo

import holitom_fx
import holitom_fx.backend as backend_module
from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.tiny import synthetic_clip, tiny_llava_onevision, video_prompt

pytestmark = pytest.mark.usefixtures("fresh_dynamo")

MERGING = HoliTomConfig(retain_ratio=0.25, tau=0.8)
MODELS = 6  # at Dynamo's default limit, the fourth model compiled by hand already runs eagerly


def video_inputs(model) -> dict:
    ids = video_prompt(model, 4, [1, 2, 3], [5, 6, 7])
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values_videos=synthetic_clip(4, model.config.vision_config.image_size, 0)[None])


def generate(model) -> None:
    model.generate(**video_inputs(model), max_new_tokens=3, do_sample=False)


@torch.no_grad()
def test_holitom_compile_merges_every_model_of_a_process(monkeypatch):
    assert torch._dynamo.config.recompile_limit == 8  # Dynamo's default, unchanged by HoliTom
    monkeypatch.setattr(backend_module, "_inductor", lambda gm, _: gm.forward)  # Dynamo's regions, not Inductor
    backends = []
    for seed in range(MODELS):
        model = tiny_llava_onevision(seed=seed)
        backends.append(holitom_fx.compile(model, MERGING))
        generate(model)
    assert [b.last_report is not None and b.last_report.sequence_length == (23, 11, 8) for b in backends] == \
        [True] * MODELS
    assert [b.uncompiled_calls for b in backends] == [0] * MODELS
    assert torch._dynamo.config.recompile_limit == 8


@torch.no_grad()
def test_a_model_dynamo_runs_eagerly_is_said_once_per_model_and_counted(caplog):
    assert torch._dynamo.config.recompile_limit == 8
    backends = []
    with caplog.at_level(logging.WARNING, logger="holitom_fx"):
        for seed in range(MODELS):
            model = tiny_llava_onevision(seed=seed)
            backend = HoliTomBackend(MERGING, compiler="eager").bind(model)
            model.compile(backend=backend)  # the process-wide region: every model shares Dynamo's limit
            backend.last_report = None
            for _ in range(2):
                generate(model)
            backends.append(backend)
    unmerged = [b for b in backends if b.last_report is None]
    assert unmerged and unmerged[-1] is backends[-1]  # the limit was reached: the last model runs eagerly
    for backend in unmerged:  # never silent: both of its video prompts counted
        assert backend.uncompiled_calls >= 2
    said = [r for r in caplog.records if "ran uncompiled" in r.getMessage()]
    assert len(said) == sum(b.uncompiled_calls > 0 for b in backends)  # once per model, however often
    message = said[-1].getMessage()
    assert said[-1].levelno == logging.WARNING and "HoliTom did not merge it" in message
    assert "torch._dynamo.config.recompile_limit (8)" in message
    fix = "isolate_recompiles=True" if backend_module.ISOLATES_RECOMPILES else "recompile_limit = 64"
    assert fix in message
    assert backends[0].uncompiled_calls == 0 and backends[0].last_report is not None
