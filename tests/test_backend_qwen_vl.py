"""holitom_backend on unmodified tiny Qwen2-VL, Qwen2.5-VL and Qwen3-VL: 3-D rotary positions (M-RoPE),
flat visual features, two frames per temporal patch. The same checks as LLaVA-OneVision, from the layout
records alone: the frame grid is read from the prompt's own (t, h, w) positions. Qwen3-VL puts each
temporal patch in a span of its own (a timestamp before it) and adds deepstack features to its first
decoder layers; its boolean-mask index needs ``capture_dynamic_output_shape_ops`` (as holitom_fx.compile
sets) to keep the boundary and the decoder in one graph."""

from __future__ import annotations

import pytest
import torch

import holitom_fx
from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.archs import GENERIC, layout_for
from holitom_fx.tiny import qwen_prompt, qwen_video_inputs, tiny_qwen_vl

from . import reference_pipeline
from .test_backend_llava_onevision import IDENTITY, MERGING, graph_count, greedy, greedy_with_first_logits

pytestmark = pytest.mark.usefixtures("fresh_dynamo", "capture_mask_indexing")

FAMILIES = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"]


@pytest.fixture
def capture_mask_indexing():
    torch._dynamo.config.capture_dynamic_output_shape_ops = True  # restored by fresh_dynamo
FRAMES, SIZE = 8, 56  # 4 temporal patches of 4 tokens (4x4 patches, merged 2x2)
TOKENS = FRAMES // 2 * 4


def compiled(family: str, cfg: HoliTomConfig):
    model = tiny_qwen_vl(family)
    backend = HoliTomBackend(cfg, compiler="eager").bind(model)
    model.compile(backend=backend)
    return model, backend


def inputs_for(model, frames=FRAMES, size=SIZE, before=(1, 2, 3), seed=0):
    return qwen_video_inputs(model, frames, size, list(before), [5, 6, 7, 8, 9], seed=seed)


def assert_generate_matches_reference(model, family, inputs, cfg, new_tokens):
    """``generate()`` of the compiled ``model``: prefill logits within 1e-4 of the eager reference pipeline
    on an uncompiled twin, greedy tokens equal."""
    expected_logits, expected_tokens = reference_pipeline.qwen_generate(tiny_qwen_vl(family), inputs, cfg,
                                                                        new_tokens)
    tokens, logits = greedy_with_first_logits(model, inputs, new_tokens)
    torch.testing.assert_close(logits, expected_logits, rtol=1e-4, atol=1e-4)
    assert tokens == [expected_tokens]


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_identity_at_full_retain_without_inner_stage(family):
    model, backend = compiled(family, IDENTITY)
    inputs = inputs_for(model)
    tokens, logits = greedy_with_first_logits(model, inputs, 8)
    expected_tokens, expected_logits = greedy_with_first_logits(tiny_qwen_vl(family), inputs, 8)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    assert tokens == expected_tokens
    report = backend.last_report
    assert report.frames == FRAMES // 2  # temporal patches are the frames of the grid
    assert report.tokens_in == report.tokens_after_outer == report.tokens_after_inner == TOKENS


@pytest.mark.parametrize("cfg", [MERGING, HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer="off")],
                         ids=["outer-inner", "outer-only"])
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_generate_matches_the_eager_reference_at_representative_positions(family, cfg):
    """Every merged token at its representative's (t, h, w), text after the video at the model's own
    positions, decoding after the prompt's last position: as the eager reference computes them."""
    model, backend = compiled(family, cfg)
    inputs = inputs_for(model)
    assert_generate_matches_reference(model, family, inputs, cfg, 12)
    report = backend.last_report
    assert (report.frames, report.tokens_in) == (FRAMES // 2, TOKENS)
    assert report.tokens_after_outer == round(cfg.retain_ratio * TOKENS)
    assert report.inner_layer == (3 if cfg.inner_enabled else None)  # Qwen3-VL: over its frames' spans
    assert report.sequence_length[0] == inputs["input_ids"].shape[1]
    assert backend.fallbacks == 0 and "masked_scatter" in report.boundary


@torch.no_grad()
def test_positions_matter_the_same_merge_renumbered_gives_other_logits():
    cfg = MERGING
    inputs = inputs_for(tiny_qwen_vl("qwen2_vl"))
    expected_logits, _ = reference_pipeline.qwen_generate(tiny_qwen_vl("qwen2_vl"), inputs, cfg, 1)
    hidden, starts, span, _ = reference_pipeline.qwen_merged_embeds(tiny_qwen_vl("qwen2_vl"), inputs, cfg)
    renumbered = torch.arange(hidden.shape[1]).expand(3, 1, -1)
    compact_logits, _ = reference_pipeline.run_decoder(tiny_qwen_vl("qwen2_vl"), hidden, starts, span, renumbered,
                                                       lambda step: renumbered[..., -1:] + 1 + step, cfg, 1)
    assert not torch.allclose(compact_logits, expected_logits, atol=1e-3)


@torch.no_grad()
def test_qwen3_deepstack_features_are_merged_with_the_tokens():
    """The deepstack features follow the merge: adding the first rows of the unmerged ones instead
    changes the logits, so the compiled path's equality above covers them."""
    cfg = HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer="off")
    model = tiny_qwen_vl("qwen3_vl")
    inputs = inputs_for(model)
    hidden, positions, visual, deepstack, _ = reference_pipeline.qwen3_merged_embeds(model, inputs, cfg)
    assert visual.sum() == round(cfg.retain_ratio * TOKENS) and deepstack[0].shape[0] == visual.sum()
    expected_logits, _ = reference_pipeline.qwen_generate(model, inputs, cfg, 1)
    unmerged = model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"],
                                              video_grid_thw=inputs["video_grid_thw"]).deepstack_features
    kept = int(visual.sum())
    lm = model.model.language_model

    def unmerged_deepstack(index, states):
        return lm._deepstack_process(states, visual, torch.cat(unmerged[index])[:kept]) if index < len(unmerged) \
            else states

    other, _ = reference_pipeline.run_decoder(model, hidden, [], 0, positions, lambda step: positions[..., -1:] + 1,
                                              cfg, 1, after_layer=unmerged_deepstack)
    assert not torch.allclose(other, expected_logits, atol=1e-3)


@torch.no_grad()
def test_qwen3_without_mask_index_capture_passes_through_and_says_why(caplog):
    """A graph break after the boundary (Qwen3-VL's deepstack mask index, uncaptured): merging there
    would hand later graphs a shortened sequence next to full-length positions, so nothing is merged."""
    model, backend = compiled("qwen3_vl", MERGING)
    torch._dynamo.config.capture_dynamic_output_shape_ops = False  # turned off after the backend set it
    inputs = inputs_for(model)
    with caplog.at_level("INFO", logger="holitom_fx"):
        tokens, logits = greedy_with_first_logits(model, inputs, 4)
    expected_tokens, expected_logits = greedy_with_first_logits(tiny_qwen_vl("qwen3_vl"), inputs, 4)
    torch.testing.assert_close(logits, expected_logits, rtol=0, atol=0)
    assert tokens == expected_tokens and backend.last_report is None
    assert any("no decoder layer runs in the graph that scatters the video" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("inner_layer", ["off", None], ids=["outer", "both stages"])
@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_batch_of_two_with_left_padding_equals_each_row_alone(family, inner_layer):
    cfg = HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer=inner_layer)
    model, backend = compiled(family, cfg)
    short, long = inputs_for(model, seed=0), inputs_for(model, before=(1, 2, 3, 4, 5), seed=1)
    pad = long["input_ids"].shape[1] - short["input_ids"].shape[1]

    def left_pad(x):
        return torch.cat([torch.zeros(1, pad, dtype=x.dtype), x], 1)

    batch = dict(input_ids=torch.cat([left_pad(short["input_ids"]), long["input_ids"]]),
                 attention_mask=torch.cat([left_pad(short["attention_mask"]), long["attention_mask"]]),
                 mm_token_type_ids=torch.cat([left_pad(short["mm_token_type_ids"]), long["mm_token_type_ids"]]),
                 pixel_values_videos=torch.cat([short["pixel_values_videos"], long["pixel_values_videos"]]),
                 video_grid_thw=torch.cat([short["video_grid_thw"], long["video_grid_thw"]]))
    together = greedy(model, batch, 8)
    report = backend.last_report
    assert report.batch == 2 and backend.fallbacks == 0
    assert (report.tokens_after_inner < report.tokens_after_outer) == (inner_layer is None)
    alone = []
    for inputs in (short, long):
        torch._dynamo.reset()
        single, _ = compiled(family, cfg)
        alone += greedy(single, inputs, 8)
    assert together == alone


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_no_added_graph_breaks_and_no_recompilation(family):
    plain = graph_count(lambda: tiny_qwen_vl(family), lambda m: (lambda gm, _: gm.forward), inputs_for,
                        vision_tower=None)
    holitom = graph_count(lambda: tiny_qwen_vl(family), lambda m: HoliTomBackend(MERGING, compiler="eager").bind(m),
                          inputs_for, vision_tower=None)
    assert holitom[0] == plain[0]
    assert holitom[1] == holitom[0]


@torch.no_grad()
def test_another_grid_with_the_same_token_count_gets_its_own_rewrite():
    """4 temporal patches of 2x2 tokens and 1 of 4x4 fill the same prompt: the grid is re-read per call."""
    cfg = HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer="off")
    model, backend = compiled("qwen2_vl", cfg)
    for frames, size in ((8, 56), (2, 112)):
        inputs = inputs_for(model, frames=frames, size=size)
        assert inputs["input_ids"].shape[1] == 26
        assert_generate_matches_reference(model, "qwen2_vl", inputs, cfg, 8)
        assert backend.last_report.frames == frames // 2
    assert backend.fallbacks == 0


@pytest.mark.parametrize("family, parts, videos", [
    ("qwen2_vl", [[1, 2], ("image", 56), [3], ("video", FRAMES, SIZE), [5, 6, 7]], 1),
    ("qwen2_vl", [[1, 2], ("video", FRAMES, SIZE), [3, 4], ("video", FRAMES, SIZE), [5, 6, 7]], 2),
    ("qwen3_vl", [[1, 2], ("image", 56), [3], ("video", FRAMES, SIZE), [5, 6, 7]], 1),
], ids=["image-and-video", "two-videos", "qwen3-image-and-video"])
@torch.no_grad()
def test_mixed_prompts_merge_each_video_on_its_own_and_leave_images(family, parts, videos):
    """Qwen3-VL joins the image's and the merged video's deepstack rows in one tensor: checked too."""
    model, backend = compiled(family, MERGING)
    inputs = qwen_prompt(model, parts)
    assert_generate_matches_reference(model, family, inputs, MERGING, 12)
    report = backend.last_report
    assert (report.videos, report.tokens_in) == (videos, videos * TOKENS)
    assert report.tokens_after_outer == videos * round(MERGING.retain_ratio * TOKENS)
    assert len(report.segments) == videos and backend.fallbacks == 0


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
@torch.no_grad()
def test_without_a_record_the_generic_path_reads_everything_off_the_graph(family):
    """The same models under a model type no record names: GENERIC finds the M-RoPE position input, the
    frames (one span per frame for Qwen3-VL) and the deepstack features by itself, and matches the
    eager reference as the records do."""
    cfg = HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer="off")
    model = tiny_qwen_vl(family)
    inputs = inputs_for(model)  # laid out by the record, before it is hidden
    model.config.model_type = "unrecorded_video_lm"
    assert layout_for(model.config) is GENERIC
    backend = HoliTomBackend(cfg, compiler="eager").bind(model)
    model.compile(backend=backend)
    assert_generate_matches_reference(model, family, inputs, cfg, 8)
    report = backend.last_report
    assert (report.frames, report.tokens_after_outer) == (FRAMES // 2, round(cfg.retain_ratio * TOKENS))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl"])
@torch.no_grad()
def test_holitom_compile_through_inductor_matches_the_eager_reference(family):
    """holitom_fx.compile, the rewritten graphs through Inductor (C++ on CPU): the M-RoPE gathers, the inner
    stage (over the frames' spans for Qwen3-VL), the data-dependent deepstack index with carried features."""
    cfg = MERGING
    model = tiny_qwen_vl(family)
    backend = holitom_fx.compile(model, cfg)
    inputs = inputs_for(model)
    assert_generate_matches_reference(model, family, inputs, cfg, 8)
    report = backend.last_report
    assert backend.fallbacks == 0 and report.tokens_after_outer == round(cfg.retain_ratio * TOKENS)
    assert report.inner_layer == 3 and report.tokens_after_inner == round(report.tokens_after_outer / 2)
