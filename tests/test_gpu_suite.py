"""benchmarks/gpu_suite.sh does not rot: its dry run on the CPU writes every file, and the summary judges a GPU
run's numbers as the goals say (on hand-made JSONs: no GPU here)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GOALS = {"holitom_nodes_ms", "ttft_speedup", "no_graph_breaks", "no_recompiles", "no_host_sync"}


@pytest.fixture(scope="module")
def summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "benchmarks" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("timeout") is None, reason="the suite limits its steps with coreutils' timeout")
def test_dry_run_writes_every_file_and_a_summary(tmp_path):
    out = tmp_path / "suite"
    run = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", str(out)],
                         env={**os.environ, "PYTHON": sys.executable}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("versions.txt", "steps.tsv", "summary.txt", "summary.json", "tests.log", "bench_ops.log",
                 "latency.log", "scaling.log", "bench_ops/bench_ops.json", "latency/latency.json",
                 "scaling/scaling.json"):
        assert (out / name).is_file(), name
    versions = (out / "versions.txt").read_text()
    assert f"({ROOT / 'holitom_fx' / '__init__.py'})" in versions  # this checkout's package, not an install
    assert "device" in (out / "tests.log").read_text()  # the device tests were collected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dry_run"] is True
    assert [(s["step"], s["status"]) for s in summary["steps"]] == [
        ("preflight", "ok"), ("tests", "ok"), ("bench_ops", "ok"), ("latency", "ok"), ("scaling", "ok")]
    assert summary["goals"].keys() == GOALS
    checks = [c for goal in summary["goals"].values() for c in goal["checks"]]
    # every JSON entry a goal reads was there; timings of tiny CPU shapes are not judged, structure is
    assert all(c["status"] != "missing" for c in checks if c["source"] != "tests.xml")
    assert {c["status"] for c in checks if c["source"] != "tests.xml" and isinstance(c["value"], float)} == {"n/a"}
    assert {c["status"] for c in checks if c["source"] != "tests.xml" and not isinstance(c["value"], float)} == {
        "pass"}
    assert "DRY RUN" in (out / "summary.txt").read_text()


def gpu_run(folder: Path, nodes_ms=(1.5, 2.0), ttft=3.1, graphs=(4, 4), timing=(4, 4), sync="pass") -> Path:
    """An output folder as a GPU run would leave it, with the given numbers."""
    (folder / "bench_ops").mkdir(parents=True)
    (folder / "latency").mkdir()
    (folder / "bench_ops" / "bench_ops.json").write_text(json.dumps(dict(
        device="cuda", frames=32, tokens=196, dim=3584, dtype="torch.bfloat16", compiler="inductor",
        total_ms=dict(compiled=sum(nodes_ms), eager=20.0), graphs=dict(after_warmup=2, after_timing=2))))
    counts = dict(vanilla=graphs[1], holitom=graphs[0])
    (folder / "latency" / "latency.json").write_text(json.dumps(dict(
        preset="7b", compiler="inductor", machine=dict(device="cuda"), speedup=dict(ttft=ttft),
        breakdown=dict(holitom=dict(holitom_ms=nodes_ms[0])),
        graphs=dict(after_warmup=counts, after_timing={**counts, "holitom": counts["holitom"] + timing[0] - timing[1]},
                    holitom_fallbacks=0, holitom_saliency_fallbacks=0))))
    failure = '<failure message="SyncError: called a synchronizing CUDA operation"/>' if sync == "fail" else ""
    (folder / "tests.xml").write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.test_compiled_on_device" name="test_holitom_generate_through_inductor_on_device'
        '[cuda]"/><testcase classname="tests.test_compiled_on_device" name="test_merged_prefill_on_cuda_syncs_nothing">'
        f'{failure}</testcase></testsuite></testsuites>')
    (folder / "steps.tsv").write_text("".join(f"{step}\tok\t1\t\n" for step in ("preflight", "tests", "bench_ops",
                                                                                "latency")))
    return folder


def verdicts(summary_module, folder: Path) -> tuple[int, dict[str, str]]:
    failed = summary_module.main([str(folder)])
    goals = json.loads((folder / "summary.json").read_text())["goals"]
    return failed, {name: goal["verdict"] for name, goal in goals.items()}


def test_summary_passes_a_gpu_run_that_meets_every_goal(summary_module, tmp_path):
    assert verdicts(summary_module, gpu_run(tmp_path)) == (0, dict.fromkeys(GOALS, "PASS"))


@pytest.mark.parametrize("numbers, failing", [
    (dict(nodes_ms=(4.0, 2.0)), "holitom_nodes_ms"),  # 6 ms of nodes in bench_ops (the 7B run's 4 ms passes)
    (dict(ttft=2.4), "ttft_speedup"),
    (dict(graphs=(5, 4)), "no_graph_breaks"),
    (dict(timing=(5, 4)), "no_recompiles"),
    (dict(sync="fail"), "no_host_sync"),
])
def test_summary_fails_the_goal_a_gpu_run_misses(summary_module, tmp_path, numbers, failing):
    failed, found = verdicts(summary_module, gpu_run(tmp_path, **numbers))
    assert failed == 1 and found == {**dict.fromkeys(GOALS, "PASS"), failing: "FAIL"}


def test_summary_without_a_step_evaluates_nothing_it_needed(summary_module, tmp_path):
    folder = gpu_run(tmp_path)
    (folder / "latency" / "latency.json").unlink()
    failed, found = verdicts(summary_module, folder)
    assert failed == 0 and found == {**dict.fromkeys(GOALS, "not evaluated"), "no_host_sync": "PASS"}
    assert "missing latency.json" in (folder / "summary.txt").read_text()
