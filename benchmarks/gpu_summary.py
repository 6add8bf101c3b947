"""The GPU goals, passed or failed, read off what ``benchmarks/gpu_suite.sh`` wrote into its folder.

    python benchmarks/gpu_summary.py OUTDIR [--dry-run]

Writes ``OUTDIR/summary.json`` and ``OUTDIR/summary.txt`` and prints the text. Standard library only, so it
still reports when the preflight found torch or this package missing. The goals (issue 13, item 5):

* ``holitom_nodes_ms``: HoliTom's own nodes (vision saliency + outer + inner merge), compiled, <= 5 ms at
  32 x 196 x 3584 bf16 on cuda: ``bench_ops.json`` (the ops alone) and ``latency.json`` (the same nodes at the
  7B run's shapes and config).
* ``ttft_speedup``: TTFT vanilla / HoliTom >= 2.5 at LLaVA-OneVision-7B dimensions on cuda (``latency.json``).
* ``no_graph_breaks``: HoliTom compiles as many graphs as vanilla (``latency.json``), rewrites them without a
  fallback, and the device test of ``generate()`` through Inductor passed (``tests.xml``).
* ``no_recompiles``: no graph compiled during the timed runs (``latency.json``, ``bench_ops.json``), nothing by a
  second identical ``generate()`` (the device test).
* ``no_host_sync``: the merged prefill ran under ``torch.cuda.set_sync_debug_mode("error")`` and Inductor's graphs
  hold no sync of HoliTom's (the device tests).

Each goal is checked against one or more sources. A check is ``pass`` or ``fail``; ``n/a`` where the run was
not the goal's setting (the timings of a dry run, another device or size: structural checks are evaluated
always); ``missing`` where its file or entry is absent (its step failed, timed out or was skipped). A goal
passes when all its checks pass, fails when one fails, and is otherwise not evaluated.
Exit status: the number of goals that failed.
"""

from __future__ import annotations

import argparse
import json
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Callable

NODES_MS = 5.0
TTFT_SPEEDUP = 2.5
#: The device tests the goals read (their pytest ids).
GENERATE_TEST = "test_holitom_generate_through_inductor_on_device[cuda]"
SYNC_TEST = "test_merged_prefill_on_cuda_syncs_nothing"


def load(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_results(path: Path) -> dict[str, tuple[str, str]] | None:
    """``{test id: (pass / fail / skipped, message)}`` from pytest's JUnit XML, None without one."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    results = {}
    for case in root.iter("testcase"):
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        if outcome is None:
            results[case.get("name")] = ("pass", "")
        else:
            status = "skipped" if outcome.tag == "skipped" else "fail"
            results[case.get("name")] = (status, (outcome.get("message") or "")[:300])
    return results


def check(source: str, what: str, value: Any, ok: bool | None, detail: str = "") -> dict:
    """One check: ``ok`` True / False, or None for n/a (``detail`` says why)."""
    status = "n/a" if ok is None else "pass" if ok else "fail"
    return dict(source=source, what=what, value=value, status=status, detail=detail)


def missing(source: str, what: str, detail: str) -> dict:
    return dict(source=source, what=what, value=None, status="missing", detail=detail)


def from_json(record: dict | None, source: str, what: str, read: Callable[[dict], Any],
              judge: Callable[[Any], bool | None], why_missing: str, detail: str = "") -> dict:
    """A check on a value read off a benchmark's JSON; missing when the JSON or the entry is absent."""
    if record is None:
        return missing(source, what, why_missing)
    try:
        value = read(record)
    except (KeyError, TypeError, IndexError) as err:
        return missing(source, what, f"no entry {err} in {source}")
    return check(source, what, value, judge(value), detail)


def from_test(results: dict | None, test: str, what: str, why_missing: str) -> dict:
    if results is None:
        return missing("tests.xml", what, why_missing)
    if test not in results:
        return missing("tests.xml", what, f"{test} did not run")
    status, message = results[test]
    if status == "skipped":
        return missing("tests.xml", what, f"{test} skipped: {message}")
    return check("tests.xml", what, test, status == "pass", message)


def goals(out: Path, dry_run: bool, step_status: dict[str, str]) -> dict[str, dict]:
    bench, latency = load(out / "bench_ops" / "bench_ops.json"), load(out / "latency" / "latency.json")
    tests = test_results(out / "tests.xml")

    def why(step: str) -> str:
        return f"step {step}: {step_status.get(step, 'not run')}"

    tests_why = "dry run: the device tests are collected, not run" if dry_run else why("tests")
    goal_size = bench is not None and (bench.get("device"), bench.get("frames"), bench.get("tokens"), bench.get(
        "dim"), bench.get("dtype"), bench.get("compiler", "inductor")) == ("cuda", 32, 196, 3584, "torch.bfloat16",
                                                                           "inductor")
    bench_setting = "" if goal_size else "not 32 x 196 x 3584 bf16 compiled on cuda"
    at_7b = latency is not None and latency.get("preset") == "7b" and latency.get("compiler") == "inductor" and \
        str(latency.get("machine", {}).get("device", "")).startswith("cuda")
    latency_setting = "" if at_7b else "not the 7b preset compiled on cuda"

    def under(limit: float, applies: bool) -> Callable[[float], bool | None]:
        return lambda value: value <= limit if applies else None

    return {
        "holitom_nodes_ms": [
            from_json(bench, "bench_ops.json", f"saliency + merge, compiled, ms (<= {NODES_MS:g})",
                      lambda r: r["total_ms"]["compiled"], under(NODES_MS, goal_size), why("bench_ops"),
                      bench_setting),
            from_json(latency, "latency.json", f"HoliTom's nodes in the 7B run, ms (<= {NODES_MS:g})",
                      lambda r: r["breakdown"]["holitom"]["holitom_ms"], under(NODES_MS, at_7b), why("latency"),
                      latency_setting),
        ],
        "ttft_speedup": [
            from_json(latency, "latency.json", f"TTFT vanilla / HoliTom (>= {TTFT_SPEEDUP:g})",
                      lambda r: r["speedup"]["ttft"], lambda v: v >= TTFT_SPEEDUP if at_7b else None,
                      why("latency"), latency_setting),
        ],
        "no_graph_breaks": [
            from_json(latency, "latency.json", "graphs after warm-up, HoliTom = vanilla",
                      lambda r: [r["graphs"]["after_warmup"]["holitom"], r["graphs"]["after_warmup"]["vanilla"]],
                      lambda v: v[0] == v[1], why("latency")),
            from_json(latency, "latency.json", "HoliTom fallbacks (graph, saliency) = 0",
                      lambda r: [r["graphs"]["holitom_fallbacks"], r["graphs"]["holitom_saliency_fallbacks"]],
                      lambda v: v == [0, 0], why("latency")),
            from_test(tests, GENERATE_TEST, "generate() through Inductor: graphs and breaks as plain Dynamo",
                      tests_why),
        ],
        "no_recompiles": [
            from_json(latency, "latency.json", "graphs after timing = after warm-up",
                      lambda r: [r["graphs"]["after_timing"], r["graphs"]["after_warmup"]],
                      lambda v: v[0] == v[1], why("latency")),
            from_json(bench, "bench_ops.json", "graphs after timing = after warm-up",
                      lambda r: [r["graphs"]["after_timing"], r["graphs"]["after_warmup"]],
                      lambda v: v[0] == v[1], why("bench_ops")),
            from_test(tests, GENERATE_TEST, "a second generate() compiles nothing", tests_why),
        ],
        "no_host_sync": [
            from_test(tests, SYNC_TEST, "merged prefill under set_sync_debug_mode('error')", tests_why),
            from_test(tests, GENERATE_TEST, "no sync of HoliTom's in Inductor's ATen graphs", tests_why),
        ],
    }


def verdict(checks: list[dict]) -> str:
    statuses = {c["status"] for c in checks}
    if "fail" in statuses:
        return "FAIL"
    return "PASS" if statuses == {"pass"} else "not evaluated"


def figures(out: Path) -> dict[str, Any]:
    """Numbers worth reading beside the goals, where their JSON exists."""
    found: dict[str, Any] = {}
    latency, scaling = load(out / "latency" / "latency.json"), load(out / "scaling" / "scaling.json")
    if latency is not None:
        found["latency"] = dict(device=latency.get("machine", {}).get("device_name"), preset=latency.get("preset"),
                                breakdown_ms=latency.get("breakdown"), speedup=latency.get("speedup"),
                                kv_ratio=latency.get("kv", {}).get("ratio"),
                                compile_and_first_generate_s=latency.get("compile_and_first_generate_s"))
    bench = load(out / "bench_ops" / "bench_ops.json")
    if bench is not None:
        found["bench_ops"] = dict(median_ms=bench.get("median_ms"), compile_s=bench.get("compile_s"))
    if scaling is not None:
        found["scaling"] = dict(exponents=scaling.get("exponents"),
                                ms_per_frame={r["frames"]: r["ms_per_frame"] for r in scaling.get("rows", [])})
    return found


def steps(out: Path) -> list[dict]:
    rows = []
    try:
        lines = (out / "steps.tsv").read_text().splitlines()
    except OSError:
        return rows
    for line in lines:
        name, status, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
        rows.append(dict(step=name, status=status, seconds=int(seconds or 0), detail=detail))
    return rows


def render(summary: dict) -> str:
    lines = [f"gpu_suite {'DRY RUN (CPU, tiny shapes: timings mean nothing)' if summary['dry_run'] else 'GPU run'}"
             f": {summary['out']}", "", "steps:"]
    lines += [f"  {s['step']:<10} {s['status']:<8} {s['seconds']:>4d} s  {s['detail']}" for s in summary["steps"]]
    lines += ["", "goals:"]
    for name, goal in summary["goals"].items():
        lines.append(f"  {name:<17} {goal['verdict']}")
        for c in goal["checks"]:
            value = f"{c['value']:.2f}" if isinstance(c["value"], float) else c["value"]
            lines.append(f"      {c['status']:<7} {c['source']:<15} {c['what']}"
                         + ("" if c["status"] == "missing" else f": {value}")
                         + (f"  ({c['detail']})" if c["detail"] else ""))
    counts = {v: sum(g["verdict"] == v for g in summary["goals"].values()) for v in ("PASS", "FAIL", "not evaluated")}
    lines += ["", "goals: " + ", ".join(f"{n} {v}" for v, n in counts.items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    step_rows = steps(args.out)
    checks = goals(args.out, args.dry_run, {s["step"]: s["status"] for s in step_rows})
    summary = dict(out=str(args.out), dry_run=args.dry_run, steps=step_rows,
                   goals={name: dict(verdict=verdict(c), checks=c) for name, c in checks.items()},
                   figures=figures(args.out))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = render(summary)
    (args.out / "summary.txt").write_text(text)
    print(text, end="")
    return sum(goal["verdict"] == "FAIL" for goal in summary["goals"].values())


if __name__ == "__main__":
    raise SystemExit(main())
