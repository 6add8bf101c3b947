"""Smoke test of benchmarks/latency.py: a tiny model, one repeat, graphs run uncompiled; no timings asserted."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch._dynamo

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def latency():
    spec = importlib.util.spec_from_file_location("latency_benchmark", BENCHMARKS / "latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = torch._dynamo.config
    with config.patch(recompile_limit=config.recompile_limit, capture_scalar_outputs=config.capture_scalar_outputs):
        yield module  # the benchmark raises the one and sets the other; both are put back
    torch._dynamo.reset()


def test_latency_benchmark_writes_its_json(latency, tmp_path):
    record = latency.main(["--preset", "tiny", "--compiler", "eager", "--frames", "2", "--new-tokens", "2",
                           "--repeats", "1", "--retain-ratio", "0.25", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "latency.json").read_text())
    assert written["breakdown"].keys() == {"vanilla", "holitom"}
    for row in written["breakdown"].values():
        assert row.keys() == {"vision_ms", "holitom_ms", "llm_ms", "ttft_ms", "decode_tok_s"}
        assert row["vision_ms"] + row["holitom_ms"] + row["llm_ms"] == pytest.approx(row["ttft_ms"])
    assert {"ttft", "llm", "decode"} <= written["speedup"].keys()
    assert written["holitom_nodes_ms"].keys() == {"compiled", "eager"}
    holitom = written["holitom"]
    assert holitom["tokens_in"] > holitom["tokens_after_outer"] >= holitom["tokens_after_inner"]
    assert holitom["saliency"].startswith("vision attention")  # the compiled vision tower's saliency reached it
    assert written["graphs"]["after_timing"] == written["graphs"]["after_warmup"]  # no recompilation while timing
    assert written["graphs"]["holitom_fallbacks"] == 0
    assert record["frames"] == 2 and len(written["samples"]["holitom_ttft"]) == 1
    kv = written["kv"]  # read off the cache objects after a prefill, both stages on
    assert kv["holitom"]["bytes"] < kv["vanilla"]["bytes"] and kv["holitom"]["error"] == 0.0 == kv["vanilla"]["error"]
    layers = record["model"]["llm_layers"]
    assert kv["holitom"]["tokens_per_layer"] == [holitom["sequence_length"][1]] * holitom["inner_layer"] + [
        holitom["sequence_length"][2]] * (layers - holitom["inner_layer"])


def test_kv_cache_at_llava_onevision_7b_is_what_the_token_counts_predict(latency, tmp_path):
    """32 frames, r = 0.10, both stages, bf16, on fake tensors: the caches after one prefill hold what the
    token counts predict (within 1 %), about 8.4 % of vanilla; 64 GiB then holds that many more requests."""
    record = latency.main(["--kv-fake", "--retain-ratio", "0.10", "--out", str(tmp_path)])
    kv = record["kv"]
    assert abs(kv["holitom"]["error"]) < 0.01 and abs(kv["vanilla"]["error"]) < 0.01
    assert kv["ratio"] == pytest.approx(sum(kv["holitom"]["tokens_per_layer"]) / sum(kv["vanilla"]["tokens_per_layer"]))
    video = round(0.1 * 32 * 196) + 1  # r*T*N merged tokens and the newline
    assert kv["holitom"]["tokens_per_layer"] == [video + 14] * 18 + [video // 2 + 14] * 10  # half from K = 18
    per_token_layer = 2 * 4 * 128 * 2  # keys and values, 4 KV heads of 128, bf16
    assert kv["vanilla"]["bytes"] == 28 * (32 * 196 + 1 + 14) * per_token_layer  # 28 layers, video + newline + text
    assert kv["holitom"]["concurrent_videos"] == int(64 * 2**30 // kv["holitom"]["bytes"]) > 10 * kv["vanilla"][
        "concurrent_videos"]
    assert json.loads((tmp_path / "latency_kv.json").read_text())["kv"] == kv
