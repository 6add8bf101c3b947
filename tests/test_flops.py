"""holitom_fx.flops: the paper's formula against its table; the graph count against independent counts."""

from __future__ import annotations

import json

import pytest
import torch
import torch._dynamo
from torch.utils.flop_counter import FlopCounterMode

from holitom_fx import HoliTomConfig, flops
from holitom_fx.tiny import synthetic_clip, tiny_llava_onevision, video_prompt

# The paper's table (HoliTom, LLaVA-OneVision-7B, 32 x 196 tokens): prefill TFLOPs.
PAPER = {
    ("vanilla", 1.0): 40.8,
    ("holitom_wo_inner", 0.25): 8.7, ("holitom", 0.25): 7.1,
    ("holitom_wo_inner", 0.20): 7.0, ("holitom", 0.20): 5.8,
    ("holitom_wo_inner", 0.15): 5.2, ("holitom", 0.15): 4.3,
    ("holitom_wo_inner", 0.10): 3.4, ("holitom", 0.10): 2.8,
}


@pytest.mark.parametrize("method,ratio", list(PAPER), ids=[f"{m}-{r}" for m, r in PAPER])
def test_formula_reproduces_the_paper_table(method, ratio):
    assert abs(flops.formula_tflops(ratio, inner=method == "holitom") - PAPER[method, ratio]) <= 0.1


def test_formula_reads_tokens_as_the_spec_says():
    # round(r*T*N) visual + 14 text tokens; layers 18.. keep round(visual/2) visual tokens.
    assert flops.formula_tokens(0.10, inner=False) == [627 + 14] * 28
    assert flops.formula_tokens(0.10, inner=True) == [627 + 14] * 18 + [314 + 14] * 10
    n, d, m = 100, 8, 16
    assert flops.layer_formula_flops(n, d, m) == 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def test_cli_formula_only_prints_json_rows(capsys):
    assert flops.main(["--json", "--formula-only"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["method"], r["retain_ratio"]) for r in rows] == [
        ("vanilla", 1.0), *[(m, r) for r in flops.RATIOS for m in ("holitom_wo_inner", "holitom")]]
    for row in rows:
        assert abs(row["formula_tflops"] - PAPER[row["method"], row["retain_ratio"]]) <= 0.1


@pytest.mark.parametrize("path,part", [
    ("L['self'].model.language_model.layers.3.self_attn.q_proj", "layer.3.attn_proj"),
    ("L['self']._modules['model']._modules['language_model']._modules['layers']._modules['12'].self_attn",
     "layer.12.attention"),
    ("L['self'].model.language_model.layers.0.mlp.down_proj", "layer.0.mlp"),
    ("L['self'].model.language_model.layers.0.input_layernorm", "layer.0.other"),
    ("L['self'].model.vision_tower.vision_model.encoder.layers.5.self_attn.q_proj", "vision_tower"),
    ("L['self'].model.multi_modal_projector.linear_1", "projector"),
    ("L['self'].lm_head", "lm_head"),
    ("L['self'].model.language_model.norm", "other"),
    ("", "other"),
])
def test_module_part(path, part):
    assert flops.module_part(path) == part
    assert flops.module_part(path, holitom=True) == "holitom"


# --- the graph count on a tiny model --------------------------------------------------------------

FRAMES = 6
BEFORE, AFTER = 5, 9
INNER = HoliTomConfig(retain_ratio=0.25, tau=0.8)
OUTER_ONLY = HoliTomConfig(retain_ratio=0.25, tau=0.8, inner_layer="off")


@pytest.fixture(scope="module")
def counts():
    torch._dynamo.reset()
    config = tiny_llava_onevision().config
    vanilla, inner, outer = flops.count_prefill_flops(config, FRAMES, [None, INNER, OUTER_ONLY], BEFORE, AFTER,
                                                      dtype=torch.float32)
    return config, vanilla, inner, outer


@torch.no_grad()
def eager_module_flops(model_config):
    """FlopCounterMode's own per-module count of an eager forward, with eager (matmul) attention."""
    model = tiny_llava_onevision()
    model.set_attn_implementation("eager")
    ids = video_prompt(model, FRAMES, list(range(1, BEFORE + 1)), list(range(1, AFTER + 1)))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=1,
              pixel_values_videos=synthetic_clip(FRAMES, model_config.vision_config.image_size)[None])
    return {name.split(".", 1)[1] if "." in name else name: sum(ops.values())
            for name, ops in counter.get_flop_counts().items()}, ids.shape[1]


def layer_flops(model_config, n):
    text = model_config.text_config
    return flops.layer_graph_flops(n, text.hidden_size, text.intermediate_size, text.num_attention_heads,
                                   text.num_key_value_heads, getattr(text, "head_dim", None))


def test_vanilla_graph_count_equals_flop_counter_on_the_eager_model(counts):
    config, vanilla, _, _ = counts
    eager, length = eager_module_flops(config)
    layers = config.text_config.num_hidden_layers
    assert vanilla.graphs == 1 and vanilla.sequence_length == (length,) * 3
    assert vanilla.per_layer == [eager[f"model.language_model.layers.{i}"] for i in range(layers)]
    assert vanilla.parts["decoder_layers"] == sum(eager[f"model.language_model.layers.{i}"] for i in range(layers))
    assert vanilla.parts["lm_head"] == eager["lm_head"] > 0
    # SigLIP's attention-pooling head runs eagerly but feeds nothing LLaVA-OneVision uses: not in the graph.
    head = eager.get("model.vision_tower.head", 0)
    assert vanilla.parts["vision_tower"] == eager["model.vision_tower"] - head > 0
    assert vanilla.parts["projector"] == eager["model.multi_modal_projector"] > 0
    assert vanilla.parts["holitom"] == 0 and vanilla.parts["other"] == 0
    assert vanilla.per_layer == [layer_flops(config, length)] * layers


def test_holitom_graph_count_follows_the_report_token_counts(counts):
    config, vanilla, inner, outer = counts
    layers = config.text_config.num_hidden_layers
    grid = FRAMES * 4
    length = vanilla.sequence_length[0]
    merged = length - (grid + 1) + round(0.25 * grid) + 1
    assert outer.report.sequence_length == (length, merged, merged)
    assert inner.report.sequence_length[:2] == (length, merged)
    k, after_inner = inner.report.inner_layer, inner.report.sequence_length[2]
    assert k == 3 and after_inner < merged

    assert outer.per_layer == [layer_flops(config, merged)] * layers
    assert inner.per_layer == [layer_flops(config, merged)] * k + [layer_flops(config, after_inner)] * (layers - k)
    # Linear layers scale with the tokens each layer sees; attention with their square.
    assert outer.components["mlp"] * length == vanilla.components["mlp"] * merged
    assert outer.components["attn_proj"] * length == vanilla.components["attn_proj"] * merged
    assert outer.components["attention"] * length ** 2 == vanilla.components["attention"] * merged ** 2
    assert vanilla.llm_tflops > outer.llm_tflops > inner.llm_tflops > 0

    for count in (inner, outer):  # before the merge nothing changes; HoliTom's own matmuls are counted apart
        assert count.parts["vision_tower"] == vanilla.parts["vision_tower"]
        assert count.parts["projector"] == vanilla.parts["projector"]
        assert count.parts["lm_head"] == vanilla.parts["lm_head"]
        assert count.parts["holitom"] > 0 and count.parts["other"] == 0
    assert inner.parts["holitom"] > outer.parts["holitom"]  # the inner stage's last-query attention and fold


def test_table_rows_on_a_tiny_model():
    torch._dynamo.reset()
    rows = flops.table(ratios=[0.5], methods=["vanilla", "holitom"], model_config=tiny_llava_onevision().config,
                       frames=2)
    assert [(r["method"], r["retain_ratio"]) for r in rows] == [("vanilla", 1.0), ("holitom", 0.5)]
    assert all({"formula_tflops", "graph_tflops", "sequence_length", "graph_parts_tflops"} <= set(r) for r in rows)
    assert rows[1]["sequence_length"][1] == rows[0]["sequence_length"][0] - 8 + 4
    assert 0 < rows[1]["graph_tflops"] < rows[0]["graph_tflops"]
