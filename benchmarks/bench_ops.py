"""Eager vs compiled HoliTom ops: outer + inner merge at 32 frames x 196 tokens x 3584 dims.

Prints a table of medians (and writes JSON + a PNG bar chart under ``--out``).
CPU: fp32. On a GPU, bf16 by default. Ratios are measured side by side in one run,
the two variants alternating, so machine noise hits both alike.

    python benchmarks/bench_ops.py                 # the issue's size
    python benchmarks/bench_ops.py --frames 8 --repeats 3   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from holitom_fx import HoliTomConfig
from holitom_fx.ops import inner_merge, outer_merge

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


def holitom_step(features, saliency, config, text_tokens: int):
    """Outer merge, then the inner merge on a prefill-sized hidden state built from its output."""
    outer = outer_merge(features, saliency, config)
    visual = outer.tokens.shape[0]
    hidden = torch.cat([outer.tokens.new_zeros(text_tokens, outer.tokens.shape[1]), outer.tokens])[None]
    attention = hidden.float().norm(dim=-1)
    merged, keep = inner_merge(hidden, attention, torch.tensor([text_tokens], device=hidden.device), visual,
                               config.inner_ratio)
    return merged, keep


def timed(fn, sync) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=196)
    parser.add_argument("--dim", type=int, default=3584)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: fp32 CPU, bf16 GPU)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    config = HoliTomConfig()
    features, saliency = synthetic_video(args.frames, args.tokens, args.dim, device, dtype)
    variants = {"eager": holitom_step, "compiled": torch.compile(holitom_step, fullgraph=True)}

    compile_s = timed(lambda: variants["compiled"](features, saliency, config, 14), sync)
    log.info("compile + first call: %.1f s", compile_s)
    variants["eager"](features, saliency, config, 14)  # warm-up
    samples = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():  # alternate, side by side
            samples[name].append(timed(lambda: fn(features, saliency, config, 14), sync))
    medians = {name: statistics.median(values) * 1e3 for name, values in samples.items()}

    header = f"{'variant':<10} {'median ms':>10} {'min ms':>8} {'speed-up':>9}"
    print(f"HoliTom ops, {args.frames}x{args.tokens}x{args.dim} {str(dtype).removeprefix('torch.')} on "
          f"{device.type} ({torch.get_num_threads()} threads), {args.repeats} runs, torch {torch.__version__}")
    print(header)
    print("-" * len(header))
    for name, values in samples.items():
        print(f"{name:<10} {medians[name]:>10.1f} {min(values) * 1e3:>8.1f} {medians['eager'] / medians[name]:>8.2f}x")

    args.out.mkdir(parents=True, exist_ok=True)
    record = {"frames": args.frames, "tokens": args.tokens, "dim": args.dim, "dtype": str(dtype),
              "device": device.type, "repeats": args.repeats, "median_ms": medians,
              "samples_ms": {k: [v * 1e3 for v in vs] for k, vs in samples.items()}, "compile_s": compile_s}
    (args.out / "bench_ops.json").write_text(json.dumps(record, indent=2))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(4, 3))
    ax.bar(list(medians), list(medians.values()), color=["#999999", "#d62728"])
    ax.set_ylabel("median ms per video")
    ax.set_title(f"HoliTom merge {args.frames}x{args.tokens}x{args.dim}")
    fig.tight_layout()
    fig.savefig(args.out / "bench_ops.png", dpi=120)
    log.info("wrote %s", args.out / "bench_ops.png")


if __name__ == "__main__":
    main()
