"""holitom_backend on an unmodified tiny LLaVA-OneVision: identity, reference equality, hygiene."""

from __future__ import annotations

import logging

import pytest
import torch
import torch._dynamo
from hypothesis import given, settings, strategies as st

import holitom_fx
from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.backend import DYNAMO_CAPTURE
from holitom_fx.tiny import synthetic_clip, tiny_llava_onevision, video_prompt

from . import reference_pipeline

FRAMES = 6


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def compiled_model(cfg: HoliTomConfig, compiler="eager", seed=0, vision=False, factory=tiny_llava_onevision,
                   **model_kwargs):
    """A tiny model compiled with a HoliTom backend; ``vision``: its vision tower too (as holitom_fx.compile)."""
    model = factory(seed=seed, **model_kwargs)
    backend = HoliTomBackend(cfg, compiler=compiler).bind(model)
    if vision:
        model.model.vision_tower.compile(backend=backend)
    model.compile(backend=backend)
    return model, backend


def video_inputs(model, frames=FRAMES, before=(1, 2, 3), after=(5, 6, 7, 8, 9), seed=0):
    ids = video_prompt(model, frames, list(before), list(after))
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                pixel_values_videos=synthetic_clip(frames, model.config.vision_config.image_size, seed)[None])


def greedy(model, inputs, new_tokens):
    out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return out[:, inputs["input_ids"].shape[1]:].tolist()


def assert_batch_equals_each_row_alone(model, batch, rows, compile_single, new_tokens=8):
    """``generate()`` on a left-padded ``batch`` gives each of its ``rows`` (inputs alone) what that row gives
    alone on a freshly compiled model (``compile_single()``)."""
    length = batch["input_ids"].shape[1]
    together = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)[:, length:].tolist()
    alone = []
    for inputs in rows:
        torch._dynamo.reset()
        alone += greedy(compile_single(), inputs, new_tokens)
    assert together == alone


def assert_generate_is_unchanged(model, reference, inputs, new_tokens=8):
    """``generate()`` of ``model`` gives the uncompiled ``reference``'s tokens and first logits, exactly."""
    tokens, logits = greedy_with_first_logits(model, inputs, new_tokens)
    expected_tokens, expected_logits = greedy_with_first_logits(reference, inputs, new_tokens)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    assert tokens == expected_tokens


def left_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    return torch.cat([torch.zeros(1, pad, dtype=x.dtype), x], 1)


def greedy_with_step_logits(model, inputs, new_tokens):
    """(generated tokens, the logits of every step ``[new_tokens, vocab]``) of one batch-1 ``generate()``."""
    out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    return out.sequences[:, inputs["input_ids"].shape[1]:].tolist(), torch.cat(out.logits)


def greedy_with_first_logits(model, inputs, new_tokens):
    """(generated tokens, logits of the prefill's last position) of one ``generate()``."""
    out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    return out.sequences[:, inputs["input_ids"].shape[1]:].tolist(), out.logits[0]


IDENTITY = HoliTomConfig(retain_ratio=1.0, tau=1.5, inner_layer="off")
MERGING = HoliTomConfig(retain_ratio=0.25, tau=0.8)


@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage():
    reference = tiny_llava_onevision()
    model, backend = compiled_model(IDENTITY)
    inputs = video_inputs(model)
    torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=0, atol=0)
    assert greedy(model, inputs, 8) == greedy(reference, inputs, 8)
    report = backend.last_report
    assert report.tokens_in == report.tokens_after_outer == report.tokens_after_inner == FRAMES * 4 + 1


@pytest.mark.parametrize("cfg", [
    MERGING,
    HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer="off"),
    HoliTomConfig(retain_ratio=0.3, tau=0.8, positions="original"),
], ids=["compact-inner", "compact-outer-only", "original-inner"])
@torch.no_grad()
def test_prefill_and_generate_match_the_eager_reference_pipeline(cfg):
    model, backend = compiled_model(cfg, vision=True)
    inputs = video_inputs(model)
    expected_steps = []
    expected_logits, expected_tokens = reference_pipeline.generate(
        tiny_llava_onevision(), inputs["input_ids"], inputs["pixel_values_videos"], cfg, FRAMES, 16,
        saliency_twin=tiny_llava_onevision(), step_logits=expected_steps)
    # No attention mask, explicit positions: transformers derives a packed-sequence mask from
    # the positions here, so any gap leaking into it would change these logits.
    length = inputs["input_ids"].shape[1]
    logits = model(input_ids=inputs["input_ids"], pixel_values_videos=inputs["pixel_values_videos"],
                   position_ids=torch.arange(length)[None]).logits[:, -1]
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    tokens, steps = greedy_with_step_logits(model, inputs, 16)
    assert tokens == [expected_tokens]
    torch.testing.assert_close(steps, torch.cat(expected_steps), rtol=1e-4, atol=1e-4)  # decode positions too

    report = backend.last_report
    grid = FRAMES * 4
    assert (report.frames, report.tokens_in) == (FRAMES, grid + 1)
    assert report.tokens_after_outer == round(cfg.retain_ratio * grid) + 1
    if cfg.inner_enabled:
        assert report.inner_layer == 3
        assert report.tokens_after_inner == round(report.tokens_after_outer * (1 - cfg.inner_ratio))
    else:
        assert report.inner_layer is None and report.tokens_after_inner == report.tokens_after_outer
    assert report.sequence_length[0] == length
    assert report.segments and report.segments[0][0][0] == 0 and report.segments[0][-1][1] == FRAMES - 1
    assert report.boundary and "masked_scatter" in report.boundary


def assert_padded_batch_equals_each_row_alone(cfg: HoliTomConfig, **compile_kwargs) -> HoliTomBackend:
    """Batch 2 with left padding (exact budget) generates what each row generates alone."""
    model, backend = compiled_model(cfg, **compile_kwargs)
    short = video_inputs(model, before=(1, 2, 3), seed=0)
    long = video_inputs(model, before=(1, 2, 3, 4, 5), seed=1)
    pad = long["input_ids"].shape[1] - short["input_ids"].shape[1]
    ids = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), short["input_ids"]], 1), long["input_ids"]])
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    batch = dict(input_ids=ids, attention_mask=mask,
                 pixel_values_videos=torch.cat([short["pixel_values_videos"], long["pixel_values_videos"]]))
    together = greedy(model, batch, 8)
    alone = []
    for inputs in (short, long):
        torch._dynamo.reset()
        single, _ = compiled_model(cfg, **compile_kwargs)
        alone += greedy(single, inputs, 8)
    assert together == alone
    return backend


@torch.no_grad()
def test_batch_of_two_with_left_padding_equals_each_row_alone():
    assert_padded_batch_equals_each_row_alone(HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer="off"))


@torch.no_grad()
def test_batch_of_two_with_left_padding_merges_both_stages_and_equals_each_row_alone():
    """The inner stage in a padded batch: layers K.. keep full-length caches whose dropped slots every decode
    graph masks; each row generates what it generates alone (where layers K.. keep short caches)."""
    backend = assert_padded_batch_equals_each_row_alone(HoliTomConfig(retain_ratio=0.25, tau=0.8))
    report = backend.last_report
    assert report.batch == 2 and report.tokens_after_inner < report.tokens_after_outer and backend.fallbacks == 0
    decode = [g for g in backend.graphs if g.boundary is None]
    assert decode and all(g.rewrites["DroppedSlotMaskPass"] > 0 for g in decode)


def assert_generate_matches_reference_with_vision_saliency(factory=tiny_llava_onevision) -> HoliTomBackend:
    """generate() with the vision tower compiled: prefill logits and 16 tokens equal the eager reference
    ranked by the encoder's attention (which, for this input, differs from the feature-norm ranking)."""
    model, backend = compiled_model(MERGING, vision=True, factory=factory)
    inputs = video_inputs(model)
    ids, pixels = inputs["input_ids"], inputs["pixel_values_videos"]
    expected_logits, expected_tokens = reference_pipeline.generate(
        factory(), ids, pixels, MERGING, FRAMES, 16, saliency_twin=factory())
    norm_logits, _ = reference_pipeline.generate(factory(), ids, pixels, MERGING, FRAMES, 1)
    assert not torch.allclose(expected_logits, norm_logits, atol=1e-3)  # the saliency decides the merge here
    tokens, logits = greedy_with_first_logits(model, inputs, 16)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]
    assert backend.last_report.saliency == "vision attention (encoder graph)" and backend.saliency_fallbacks == 0
    return backend


@torch.no_grad()
def test_generate_ranks_by_the_attention_of_the_compiled_vision_tower():
    """generate() encodes the video before the prefill: the vision graph's saliency reaches the merge."""
    backend = assert_generate_matches_reference_with_vision_saliency()
    assert sum(g.rewrites.get("SaliencyExportPass", 0) for g in backend.graphs) == 1


@torch.no_grad()
def test_forward_call_ranks_by_the_vision_attention_inside_its_graph():
    """A plain forward call encodes the video inside the compiled graph: the saliency is computed there."""
    model, backend = compiled_model(MERGING)
    inputs = video_inputs(model)
    expected_logits, _ = reference_pipeline.generate(
        tiny_llava_onevision(), inputs["input_ids"], inputs["pixel_values_videos"], MERGING, FRAMES, 1,
        saliency_twin=tiny_llava_onevision())
    torch.testing.assert_close(model(**inputs).logits[:, -1], expected_logits, rtol=1e-4, atol=1e-4)
    assert backend.last_report.saliency.startswith("vision attention") and backend.saliency_fallbacks == 0


@torch.no_grad()
def test_plain_compile_uses_the_feature_norm_fallback_and_says_so_once(caplog):
    """model.compile(backend=...) alone, the backend not bound (it reads the traced module): generate()
    encodes the video eagerly, out of the graphs' reach."""
    model = tiny_llava_onevision()
    backend = HoliTomBackend(MERGING, compiler="eager")
    model.compile(backend=backend)
    inputs = video_inputs(model, seed=1)
    _, expected = reference_pipeline.generate(tiny_llava_onevision(), inputs["input_ids"],
                                              inputs["pixel_values_videos"], MERGING, FRAMES, 16)
    with caplog.at_level(logging.INFO, logger="holitom_fx"):
        greedy(model, video_inputs(model), 2)
        assert greedy(model, inputs, 16) == [expected]
    assert sum("feature-norm saliency fallback" in r.message for r in caplog.records) == 1
    assert backend.last_report.saliency == "feature norm"


@torch.no_grad()
def test_a_new_prompt_length_is_merged_too_without_recompiling_it_twice():
    """Dynamo re-traces a second prompt length symbolically; the backend specializes it per length."""
    model, backend = compiled_model(MERGING, vision=True)
    greedy(model, video_inputs(model), 4)
    longer = video_inputs(model, before=(1, 2, 3, 4, 5, 6), seed=1)
    ids, pixels = longer["input_ids"], longer["pixel_values_videos"]
    _, expected = reference_pipeline.generate(tiny_llava_onevision(), ids, pixels, MERGING, FRAMES, 16,
                                              saliency_twin=tiny_llava_onevision())
    assert greedy(model, longer, 16) == [expected]
    report = backend.last_report
    assert report.sequence_length[0] == ids.shape[1] and report.saliency == "vision attention (encoder graph)"
    assert backend.fallbacks == 0 and backend.saliency_fallbacks == 0
    graphs = len(backend.graphs)
    assert greedy(model, longer, 16) == [expected] and len(backend.graphs) == graphs


@torch.no_grad()
def test_prompt_as_long_as_a_weight_dimension_still_merges():
    """L equal to the hidden size: weights [64, 64] are not sequence-shaped inputs to narrow."""
    model, backend = compiled_model(MERGING, vision=True)
    hidden = model.config.text_config.hidden_size
    before = hidden - video_prompt(model, FRAMES, [], [5, 6, 7, 8, 9]).shape[1]
    inputs = video_inputs(model, before=tuple(range(1, before + 1)))
    assert inputs["input_ids"].shape[1] == hidden
    _, expected = reference_pipeline.generate(tiny_llava_onevision(), inputs["input_ids"],
                                              inputs["pixel_values_videos"], MERGING, FRAMES, 8,
                                              saliency_twin=tiny_llava_onevision())
    assert greedy(model, inputs, 8) == [expected]
    assert backend.fallbacks == 0 and backend.last_report.sequence_length[0] == hidden


@torch.no_grad()
def test_image_and_video_in_one_prompt_merge_only_the_video():
    """The image keeps its tokens; the video is ranked by its own encoder call's attention, in generate()
    (encoder graphs run image first, then video) and in a forward call (both encoder calls in one graph)."""
    model, backend = compiled_model(MERGING, vision=True)
    reference = tiny_llava_onevision()
    image = image_only(model, reference)
    video = video_inputs(model)
    ids = torch.cat([image["input_ids"], video["input_ids"]], 1)
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=image["pixel_values"],
                  image_sizes=image["image_sizes"], pixel_values_videos=video["pixel_values_videos"])
    expected_logits, expected = reference_pipeline.generate(
        reference, ids, video["pixel_values_videos"], MERGING, FRAMES, 16, saliency_twin=tiny_llava_onevision(),
        image=dict(pixel_values=image["pixel_values"], image_sizes=image["image_sizes"]))
    tokens, logits = greedy_with_first_logits(model, inputs, 16)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert tokens == [expected] and backend.last_report.saliency == "vision attention (encoder graph)"
    torch.testing.assert_close(model(**inputs).logits[:, -1], expected_logits, rtol=1e-4, atol=1e-4)
    assert backend.last_report.tokens_in == FRAMES * 4 + 1 and backend.saliency_fallbacks == 0


@torch.no_grad()
def test_two_videos_in_one_prompt_are_merged_each_on_its_own():
    model, backend = compiled_model(MERGING, vision=True)
    first, second = video_inputs(model, seed=0), video_inputs(model, before=(4,), seed=1)
    ids = torch.cat([first["input_ids"], second["input_ids"]], 1)
    pixels = torch.cat([first["pixel_values_videos"], second["pixel_values_videos"]])  # [videos, T, 3, S, S]
    inputs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels)
    expected_logits, expected = reference_pipeline.generate(tiny_llava_onevision(), ids, pixels, MERGING, FRAMES, 16,
                                                            saliency_twin=tiny_llava_onevision())
    tokens, logits = greedy_with_first_logits(model, inputs, 16)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert tokens == [expected]
    report = backend.last_report
    per_video = round(MERGING.retain_ratio * FRAMES * 4) + 1
    assert (report.videos, report.tokens_in, report.tokens_after_outer) == (2, 2 * (FRAMES * 4 + 1), 2 * per_video)
    assert len(report.segments) == 2 and backend.fallbacks == 0 and backend.saliency_fallbacks == 0


def text_only(model, reference):
    return dict(input_ids=torch.tensor([[1, 2, 3, 4, 5, 6, 7]]))


def image_only(model, reference):
    size = model.config.vision_config.image_size
    image = dict(pixel_values=synthetic_clip(2, size)[None], image_sizes=torch.tensor([[size, size]]))
    tokens = reference.model.get_image_features(**image).pooler_output[0].shape[0]
    return dict(input_ids=torch.tensor([[1, 2] + [model.config.image_token_index] * tokens + [3, 4]]), **image)


@pytest.mark.parametrize("make_inputs", [text_only, image_only], ids=["text", "image"])
@torch.no_grad()
def test_call_without_video_is_untouched_and_says_so_once(caplog, make_inputs):
    reference = tiny_llava_onevision()
    model, backend = compiled_model(MERGING, vision=True)
    inputs = make_inputs(model, reference)
    with caplog.at_level(logging.INFO, logger="holitom_fx"):
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, reference(**inputs).logits, rtol=0, atol=0)
    said = [r.message for r in caplog.records if "HoliTom did nothing" in r.message]
    assert len(said) == 1 and "no video in this call" in said[0]
    assert backend.last_report is None and backend.fallbacks == 0


@torch.no_grad()
def test_graph_it_cannot_rewrite_is_compiled_unchanged_with_a_warning(caplog):
    reference = tiny_llava_onevision()
    model, backend = compiled_model(HoliTomConfig(budget="reference"))
    inputs = video_inputs(model)
    with caplog.at_level(logging.WARNING, logger="holitom_fx"):
        logits = model(**inputs).logits
    torch.testing.assert_close(logits, reference(**inputs).logits, rtol=0, atol=0)
    assert backend.fallbacks == 1
    assert any("left a graph unchanged" in r.message and "budget='reference'" in r.message for r in caplog.records)


def _class_snapshot(model):
    classes = {type(m) for m in model.modules()}
    return {cls: dict(vars(cls)) for cls in classes}


@torch.no_grad()
def test_transformers_classes_and_model_are_untouched():
    model = tiny_llava_onevision()
    greedy(model, video_inputs(model), 2)  # transformers itself caches a few attributes on first use
    classes = _class_snapshot(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    instance = {name: set(vars(m)) for name, m in model.named_modules()}
    backend = holitom_fx.compile(model, MERGING)
    greedy(model, video_inputs(model), 4)
    assert backend.last_report is not None and backend.saliency_fallbacks == 0  # HoliTom did run, vision side too
    assert _class_snapshot(model) == classes
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    changed = {name for name, m in model.named_modules() if set(vars(m)) != instance[name]}
    assert changed <= {"", "model.vision_tower"}  # nn.Module.compile sets _compiled_call_impl, nothing else
    assert all(set(vars(model.get_submodule(name))) - instance[name] <= {"_compiled_call_impl"} for name in changed)


@torch._dynamo.config.patch(**DYNAMO_CAPTURE)  # what a HoliTom backend sets: both runs under the same settings
def graph_count(model_factory, backend_factory, inputs_factory, runs=2, vision_tower="model.vision_tower"):
    """Graphs compiled after each of ``runs`` greedy generations (the vision tower compiled too, if named)."""
    torch._dynamo.reset()
    model = model_factory()
    graphs = []
    inner = backend_factory(model)

    def counting(gm, example_inputs):
        graphs.append(gm)
        return inner(gm, example_inputs)

    if vision_tower:
        model.get_submodule(vision_tower).compile(backend=counting)
    model.compile(backend=counting)
    counts = []
    for _ in range(runs):
        greedy(model, inputs_factory(model), 4)
        counts.append(len(graphs))
    return counts


@torch.no_grad()
def test_no_added_graph_breaks_and_no_recompilation():
    plain = graph_count(tiny_llava_onevision, lambda m: (lambda gm, _: gm.forward), video_inputs)
    holitom = graph_count(tiny_llava_onevision, lambda m: HoliTomBackend(MERGING, compiler="eager").bind(m),
                           video_inputs)
    assert holitom[0] == plain[0]  # same graphs: the backend adds no break
    assert holitom[1] == holitom[0]  # a second generate() of the same shapes compiles nothing new


@torch.no_grad()
def test_holitom_compile_through_inductor_matches_the_reference_pipeline():
    """holitom_fx.compile, the rewritten graphs through Inductor (C++ on CPU): same logits and greedy tokens
    as the eager reference with the vision encoder's attention as saliency."""
    model = tiny_llava_onevision()
    backend = holitom_fx.compile(model, MERGING)
    inputs = video_inputs(model)
    expected_logits, expected = reference_pipeline.generate(
        tiny_llava_onevision(), inputs["input_ids"], inputs["pixel_values_videos"], MERGING, FRAMES, 16,
        saliency_twin=tiny_llava_onevision())
    tokens, logits = greedy_with_first_logits(model, inputs, 16)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert tokens == [expected]
    assert backend.fallbacks == 0 and backend.saliency_fallbacks == 0 and backend.last_report.inner_layer == 3
    # A new prompt length: Dynamo's symbolic re-trace, specialized and compiled by Inductor at its first call.
    longer = video_inputs(model, before=(1, 2, 3, 4, 5, 6), seed=1)
    _, expected = reference_pipeline.generate(tiny_llava_onevision(), longer["input_ids"],
                                              longer["pixel_values_videos"], MERGING, FRAMES, 16,
                                              saliency_twin=tiny_llava_onevision())
    assert greedy(model, longer, 16) == [expected]
    assert backend.fallbacks == 0 and backend.last_report.sequence_length[0] == longer["input_ids"].shape[1]


@settings(max_examples=4)
@given(frames=st.integers(1, 5), layers=st.integers(2, 5), before=st.integers(1, 4), after=st.integers(1, 4),
       ratio=st.sampled_from([0.2, 0.5, 0.75]), seed=st.integers(0, 100))
@torch.no_grad()
def test_generated_configs_identity_and_budget(frames, layers, before, after, ratio, seed):
    torch._dynamo.reset()
    reference = tiny_llava_onevision(seed=seed, layers=layers)
    model, backend = compiled_model(IDENTITY, seed=seed, layers=layers)
    inputs = video_inputs(model, frames, before=tuple(range(1, before + 1)), after=tuple(range(1, after + 1)),
                          seed=seed)
    torch.testing.assert_close(model(**inputs).logits, reference(**inputs).logits, rtol=0, atol=0)

    torch._dynamo.reset()
    cfg = HoliTomConfig(retain_ratio=ratio, tau=0.8)
    model, backend = compiled_model(cfg, seed=seed, layers=layers)
    logits = model(**inputs).logits
    report = backend.last_report
    assert report.tokens_after_outer == round(ratio * frames * 4) + 1
    assert logits.shape[1] == report.sequence_length[2] == (
        inputs["input_ids"].shape[1] - report.tokens_in + report.tokens_after_inner)


@torch.no_grad()
def test_text_first_then_video_decodes_at_the_merged_positions(caplog):
    """Decode graphs compiled before any merged prefill are left as traced (no spurious rewrite, no warning)
    and, once a video merged, decode at the merged positions all the same."""
    model, backend = compiled_model(MERGING, vision=True)
    with caplog.at_level(logging.WARNING, logger="holitom_fx"):
        model.generate(input_ids=torch.tensor([[1, 2, 3, 4, 5, 6, 7]]), max_new_tokens=4, do_sample=False)
    assert not caplog.records and backend.fallbacks == 0 and backend.last_report is None
    assert all(record.rewrites.get("DecodePositionPass", 0) == 0 for record in backend.graphs)
    inputs = video_inputs(model)
    expected_steps = []
    _, expected_tokens = reference_pipeline.generate(
        tiny_llava_onevision(), inputs["input_ids"], inputs["pixel_values_videos"], MERGING, FRAMES, 12,
        saliency_twin=tiny_llava_onevision(), step_logits=expected_steps)
    tokens, steps = greedy_with_step_logits(model, inputs, 12)
    assert tokens == [expected_tokens]
    torch.testing.assert_close(steps, torch.cat(expected_steps), rtol=1e-4, atol=1e-4)  # decode positions too
    assert backend.last_report.sequence_length[2] < inputs["input_ids"].shape[1] and backend.fallbacks == 0


@torch.no_grad()
def test_original_positions_in_a_forward_call_that_derives_them():
    """A plain forward call (no position ids given: the model derives them with arange inside the graph)
    with positions='original': the rotary tables see each token's original position, the mask stays
    contiguous; equal to the reference given those positions explicitly."""
    cfg = HoliTomConfig(retain_ratio=0.3, tau=0.8, positions="original")
    model, backend = compiled_model(cfg, vision=True)
    inputs = video_inputs(model)
    expected_logits, _ = reference_pipeline.generate(
        tiny_llava_onevision(), inputs["input_ids"], inputs["pixel_values_videos"], cfg, FRAMES, 1,
        saliency_twin=tiny_llava_onevision())
    compact_logits, _ = reference_pipeline.generate(
        tiny_llava_onevision(), inputs["input_ids"], inputs["pixel_values_videos"], MERGING, FRAMES, 1,
        saliency_twin=tiny_llava_onevision())
    assert not torch.allclose(expected_logits, compact_logits, atol=1e-3)
    logits = model(input_ids=inputs["input_ids"], pixel_values_videos=inputs["pixel_values_videos"]).logits[:, -1]
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert backend.fallbacks == 0 and any(g.rewrites.get("DerivedPositionsPass", 0) for g in backend.graphs)
