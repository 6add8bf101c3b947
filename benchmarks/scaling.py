"""HoliTom's compiled outer + inner merge as the video grows: time per frame, peak memory, compile time.

    python benchmarks/scaling.py                                   # 16..256 frames x 196 x 3584 (long on a CPU)
    python benchmarks/scaling.py --frames 16 32 64 --dim 1024      # a quick look
    python benchmarks/scaling.py --device cuda                     # on a GPU (bf16)
    python benchmarks/scaling.py --frames 2 4 --tokens 16 --dim 32 --compiler eager   # plumbing, seconds

Each frame count runs in a fresh subprocess (so its peak memory is its own: ``ru_maxrss`` on a CPU,
``torch.cuda.max_memory_allocated`` on a GPU), compiles ``bench_ops.merge_step`` with
``torch.compile(fullgraph=True)`` (compile time = the first call), then times ``--repeats`` calls
(median). The growth exponent is the least-squares slope of log(time) on log(frames): 1 is linear.
Prints a table, writes ``scaling.json`` and ``scaling.png`` (time per frame, peak memory and compile time
against frames) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench_ops import merge_step, synthetic_video, timed

import holitom_fx.ops
from holitom_fx import HoliTomConfig

log = logging.getLogger("scaling")


def one(frames: int, tokens: int, dim: int, repeats: int, device: str, dtype: str, compiler: str = "inductor") -> dict:
    """Compile and time one frame count in this process."""
    device_, dtype_ = torch.device(device), getattr(torch, dtype)
    sync = torch.cuda.synchronize if device_.type == "cuda" else (lambda: None)
    features, saliency = synthetic_video(frames, tokens, dim, device_, dtype_)
    step = torch.compile(merge_step(holitom_fx.ops), fullgraph=True, backend=compiler)
    config = HoliTomConfig(retain_ratio=0.1, tau=0.8)
    compile_s = timed(lambda: step(features, saliency, config, 14), sync)
    samples = [timed(lambda: step(features, saliency, config, 14), sync) for _ in range(repeats)]
    peak = torch.cuda.max_memory_allocated() if device_.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(frames=frames, median_ms=statistics.median(samples) * 1e3, compile_s=compile_s, peak_bytes=peak,
                input_bytes=features.numel() * features.element_size())


def growth_exponent(frames: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) on log(frames)."""
    xs, ys = [math.log(f) for f in frames], [math.log(v) for v in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot(rows: list[dict], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no plot (pip install -e '.[bench]')")
        return False
    frames = [r["frames"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key, label in zip(axes, ("ms_per_frame", "peak_gib", "compile_s"),
                              ("ms per frame", "peak memory (GiB)", "compile time (s)")):
        ax.plot(frames, [r[key] for r in rows], marker="o")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("frames")
        ax.set_title(label)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    return True


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on GPU")
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--compiler", choices=("inductor", "eager"), default="inductor",
                        help="eager: Dynamo traces, graphs run uncompiled (a seconds-long check of the plumbing)")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # the subprocess of one count
    args = parser.parse_args(argv)
    dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.one is not None:
        print(json.dumps(one(args.one, args.tokens, args.dim, args.repeats, args.device, dtype, args.compiler)))
        return []
    rows = []
    for frames in args.frames:
        started = time.perf_counter()
        run = subprocess.run([sys.executable, __file__, "--one", str(frames), "--tokens", str(args.tokens), "--dim",
                              str(args.dim), "--repeats", str(args.repeats), "--device", args.device, "--dtype", dtype,
                              "--compiler", args.compiler],
                             capture_output=True, text=True, check=True)
        row = json.loads(run.stdout.strip().splitlines()[-1])
        row.update(ms_per_frame=row["median_ms"] / frames, peak_gib=row["peak_bytes"] / 2**30)
        rows.append(row)
        log.info("%d frames: %.1f ms, compile %.1f s (%.0f s in all)", frames, row["median_ms"], row["compile_s"],
                 time.perf_counter() - started)
    frames = [r["frames"] for r in rows]
    exponents = {key: growth_exponent(frames, [r[key] for r in rows]) for key in ("median_ms", "compile_s")} \
        if len(rows) > 1 else {}
    print(f"HoliTom outer + inner merge, compiled, {args.tokens} tokens x {args.dim} dims, {dtype} on {args.device}")
    print(f"{'frames':>6} {'median ms':>10} {'ms/frame':>9} {'peak GiB':>9} {'compile s':>10}")
    for r in rows:
        print(f"{r['frames']:>6} {r['median_ms']:>10.1f} {r['ms_per_frame']:>9.2f} {r['peak_gib']:>9.2f} "
              f"{r['compile_s']:>10.1f}")
    for key, value in exponents.items():
        print(f"growth exponent of {key}: {value:.2f}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scaling.json").write_text(json.dumps(dict(rows=rows, exponents=exponents, dtype=dtype,
                                                           device=args.device, tokens=args.tokens, dim=args.dim,
                                                           compiler=args.compiler),
                                                      indent=2))
    if plot(rows, args.out / "scaling.png"):
        log.info("wrote %s", args.out / "scaling.png")
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    main()
