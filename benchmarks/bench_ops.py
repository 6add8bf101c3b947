"""Eager vs compiled HoliTom ops: outer + inner merge at 32 frames x 196 tokens x 3584 dims, and the saliency.

Two parts, each eager and compiled:

* ``merge``: outer merge, then the inner merge on a prefill-sized hidden state built from its output.
* ``saliency``: the attention each patch receives in the vision encoder layer feeding the projector,
  recomputed from that layer's q/k and pooled to the frame grid (``ops.attention_received`` +
  ``ops.pool_saliency``, what the passes insert into the vision graph), at SigLIP-so400m's shape:
  32 frames x 16 heads x 729 patches (27x27) x 72, pooled to 14x14.

Prints a table of medians (and writes JSON + a PNG bar chart under ``--out``).
CPU: fp32. On a GPU, bf16 by default. Ratios are measured side by side in one run,
the two variants alternating, so machine noise hits both alike.

    python benchmarks/bench_ops.py                 # the issue's size
    python benchmarks/bench_ops.py --frames 8 --repeats 3   # a quick look
    python benchmarks/bench_ops.py --device cuda   # on a GPU (bf16)
    python benchmarks/bench_ops.py --frames 2 --tokens 16 --dim 32 --vision-patches 16 --compiler eager  # plumbing
    python benchmarks/bench_ops.py --baseline 9260308   # + the merge as of a git revision, compiled, side by side

``--baseline REV`` loads ``holitom_fx`` as of that revision from the repository's history (``git archive``)
and times its compiled merge in the same alternation: old and new ops measured in one run. (A revision that
already has the ``holitom::segment_sum`` op cannot be loaded next to today's: the op name is taken.)

The JSON also records the graphs Dynamo compiled after the warm-up and after the timed runs (equal: no
recompilation while timing).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import logging
import math
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
import torch._dynamo
from torch._dynamo.utils import counters

import holitom_fx.ops
from holitom_fx import HoliTomConfig
from holitom_fx.ops import attention_received, pool_saliency

log = logging.getLogger("bench_ops")


def synthetic_video(frames: int, tokens: int, dim: int, device: torch.device, dtype: torch.dtype):
    """Features with a static background (half the grid) and moving foreground, as real clips have."""
    generator = torch.Generator().manual_seed(0)
    background = torch.randn(tokens // 2, dim, generator=generator)
    still = background + 0.2 * torch.randn(frames, tokens // 2, dim, generator=generator)
    moving = torch.randn(frames, tokens - tokens // 2, dim, generator=generator)
    features = torch.cat([still, moving], dim=1)
    saliency = torch.rand(frames, tokens, generator=generator)
    return features.to(device, dtype), saliency.to(device)


def merge_step(ops):
    """Outer merge, then the inner merge on a prefill-sized hidden state built from its output (``ops``: a
    ``holitom_fx.ops`` module, today's or a baseline revision's)."""

    def holitom_step(features, saliency, config, text_tokens: int):
        outer = ops.outer_merge(features, saliency, config)
        visual = outer.tokens.shape[0]
        hidden = torch.cat([outer.tokens.new_zeros(text_tokens, outer.tokens.shape[1]), outer.tokens])[None]
        attention = hidden.float().norm(dim=-1)
        return ops.inner_merge(hidden, attention, torch.tensor([text_tokens], device=hidden.device), visual,
                               config.inner_ratio)

    return holitom_step


def baseline_package(revision: str):
    """``(ops, HoliTomConfig)`` of ``holitom_fx`` as of a git revision, imported as ``holitom_baseline``."""
    root = Path(__file__).resolve().parents[1]
    archive = subprocess.run(["git", "-C", str(root), "archive", revision, "holitom_fx"], check=True,
                             capture_output=True).stdout
    folder = Path(tempfile.mkdtemp(prefix="holitom_baseline_"))
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    (folder / "holitom_fx").rename(folder / "holitom_baseline")
    sys.path.insert(0, str(folder))
    return (importlib.import_module("holitom_baseline.ops"),
            importlib.import_module("holitom_baseline.config").HoliTomConfig)


def saliency_step(query, key, attn_mask, scale, drop_leading: int, side: int, pooled_side: int):
    """Vision saliency as the passes insert it: attention received from the encoder's q/k, pooled to the grid."""
    return pool_saliency(attention_received(query, key, attn_mask, scale), drop_leading, side, pooled_side)


def vision_qk(frames: int, heads: int, patches: int, head_dim: int, device: torch.device, dtype: torch.dtype):
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(frames, heads, patches, head_dim, generator=generator).to(device, dtype)
                 for _ in range(2))


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--vision-heads", type=int, default=16)
    parser.add_argument("--vision-patches", type=int, default=729, help="patches per frame, a square (27x27)")
    parser.add_argument("--vision-head-dim", type=int, default=72)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: fp32 CPU, bf16 GPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 on a machine whose cores other work shares")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--compiler", choices=("inductor", "eager"), default="inductor",
                        help="eager: Dynamo traces, graphs run uncompiled (a seconds-long check of the plumbing)")
    parser.add_argument("--baseline", metavar="REV", default=None,
                        help="also time the compiled merge of holitom_fx as of this git revision (side by side)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:  # before compiling: Inductor's C++ kernels take their OpenMP thread count from it
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config = HoliTomConfig()
    features, saliency = synthetic_video(args.frames, args.tokens, args.dim, device, dtype)
    side = math.isqrt(args.vision_patches)
    query, key = vision_qk(args.frames, args.vision_heads, args.vision_patches, args.vision_head_dim, device, dtype)
    calls = {
        "merge": (merge_step(holitom_fx.ops), (features, saliency, config, 14)),
        "saliency": (saliency_step, (query, key, None, args.vision_head_dim ** -0.5, 0, side, (side + 1) // 2)),
    }
    variants = {}
    for part, (fn, inputs) in calls.items():
        variants[f"{part}/eager"] = (fn, inputs)
        variants[f"{part}/compiled"] = (torch.compile(fn, fullgraph=True, backend=args.compiler), inputs)
    if args.baseline:
        baseline_ops, baseline_config = baseline_package(args.baseline)
        variants["merge/baseline"] = (torch.compile(merge_step(baseline_ops), fullgraph=True, backend=args.compiler),
                                      (features, saliency, baseline_config(), 14))

    compile_s = {}
    for name, (fn, inputs) in variants.items():  # compile (the compiled ones) and warm up
        compile_s[name] = timed(lambda: fn(*inputs), sync)
        if name.endswith("compiled"):
            log.info("%s: compile + first call %.1f s", name, compile_s[name])
    graphs_warm = counters["stats"]["unique_graphs"]
    samples = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, (fn, inputs) in variants.items():  # alternate, side by side
            samples[name].append(timed(lambda: fn(*inputs), sync))
    medians = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    graphs = dict(after_warmup=graphs_warm, after_timing=counters["stats"]["unique_graphs"])
    if graphs["after_timing"] != graphs_warm:
        log.warning("Dynamo compiled %d more graph(s) during the timed runs", graphs["after_timing"] - graphs_warm)

    header = f"{'part':<9} {'variant':<10} {'median ms':>10} {'min ms':>8} {'speed-up':>9}"
    print(f"HoliTom ops, merge {args.frames}x{args.tokens}x{args.dim}, saliency {args.frames}x{args.vision_heads}x"
          f"{args.vision_patches}x{args.vision_head_dim}, {str(dtype).removeprefix('torch.')} on {device.type} "
          f"({torch.get_num_threads()} threads), {args.repeats} runs, torch {torch.__version__}")
    print(header)
    print("-" * len(header))
    for name, values in samples.items():
        part, variant = name.split("/")
        print(f"{part:<9} {variant:<10} {medians[name]:>10.1f} {min(values) * 1e3:>8.1f} "
              f"{medians[part + '/eager'] / medians[name]:>8.2f}x")
    if args.baseline:
        print(f"compiled merge vs {args.baseline}'s compiled merge: "
              f"{medians['merge/baseline'] / medians['merge/compiled']:.2f}x faster")
    totals = {v: medians[f"merge/{v}"] + medians[f"saliency/{v}"] for v in ("eager", "compiled")}
    print(f"{'total':<9} {'eager':<10} {totals['eager']:>10.1f}\n{'total':<9} {'compiled':<10} "
          f"{totals['compiled']:>10.1f} {'':>8} {totals['eager'] / totals['compiled']:>8.2f}x")

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"frames": args.frames, "tokens": args.tokens, "dim": args.dim, "dtype": str(dtype),
              "vision_heads": args.vision_heads, "vision_patches": args.vision_patches,
              "vision_head_dim": args.vision_head_dim, "threads": torch.get_num_threads(),
              "device": device.type, "repeats": args.repeats, "median_ms": medians, "total_ms": totals,
              "samples_ms": {k: [v * 1e3 for v in vs] for k, vs in samples.items()}, "compile_s": compile_s,
              "compiler": args.compiler, "graphs": graphs, "baseline": args.baseline}
    (args.out / "bench_ops.json").write_text(json.dumps(record, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(4.5, 3))
    for i, variant in enumerate(("eager", "compiled")):
        merge, sal = medians[f"merge/{variant}"], medians[f"saliency/{variant}"]
        ax.bar(variant, merge, color="#d62728", label="outer + inner merge" if i == 0 else None)
        ax.bar(variant, sal, bottom=merge, color="#ff9896", label="vision saliency" if i == 0 else None)
    ax.legend(fontsize=8, frameon=False)
    ax.set_ylabel("median ms per video")
    ax.set_title(f"HoliTom ops {args.frames}x{args.tokens}x{args.dim}", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out / "bench_ops.png", dpi=120)
    log.info("wrote %s", args.out / "bench_ops.png")


if __name__ == "__main__":
    main()
