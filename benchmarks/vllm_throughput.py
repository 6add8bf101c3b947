"""vLLM serving throughput with HoliTom's plugin vs without, at several numbers of concurrent video requests.

    python benchmarks/vllm_throughput.py                       # tiny LLaVA-OneVision on CPU, ~3 minutes
    python benchmarks/vllm_throughput.py --concurrency 1 2 --requests 4 --frames 4   # seconds: a smoke run

Runs where vLLM and holitom-fx are installed together (``bash .ci/vllm_env DIR``). Two engines on one
tiny checkpoint (``holitom_fx.tiny_checkpoints``, written to a temporary directory) live in one process:
vanilla, and HoliTom's architecture switched on by ``hf_overrides`` exactly as a user would. For each
concurrency ``c`` each engine serves ``--requests`` video requests in a closed loop: ``c`` are in flight,
and a new one is added as soon as one finishes (``LLMEngine.add_request`` / ``step``). The two engines
alternate ``--repeats`` times within each concurrency (the order flips every repeat), so machine noise hits
both alike; medians are reported. Every request has a clip of
its own (a fresh seed per request and per run), so neither vLLM's prefix cache nor its multimodal
processor cache serves a repeat.

Reported per engine and concurrency: requests/s, prompt tokens/s (the prompt as the engine serves it:
merged under HoliTom), output tokens/s, mean time to first token, and the prompt length. Writes
``vllm_throughput.json`` and ``vllm_throughput.png`` under ``--out`` and prints a table. On a CPU the
figures are ratios of one run on a shared machine, not absolute serving speeds.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # both engines in this process

log = logging.getLogger("vllm_throughput")
ARCHITECTURE = "HoliTomLlavaOnevisionForConditionalGeneration"
QUESTION = "What happens in the video?"
LLMS = {"tiny": {}, "small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
                                  num_attention_heads=8, num_key_value_heads=2, initializer_range=0.05)}
MEDIAN_KEYS = ("requests_per_s", "prompt_tokens_per_s", "output_tokens_per_s", "mean_ttft_ms", "wall_s")


def make_engine(path: str, settings: dict | None, max_num_seqs: int):
    import vllm

    overrides = {} if settings is None else {"architectures": [ARCHITECTURE], "holitom": settings}
    return vllm.LLM(model=path, dtype="float32", max_model_len=4096, enforce_eager=True, seed=0,
                    distributed_executor_backend="uni", hf_overrides=overrides, max_num_seqs=max_num_seqs,
                    limit_mm_per_prompt={"video": 1, "image": 0})


def prompt_text(path: str) -> str:
    from transformers import AutoProcessor

    messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": QUESTION}]}]
    return AutoProcessor.from_pretrained(path).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def serve(llm, text: str, clips: list, concurrency: int, new_tokens: int) -> dict:
    """Closed loop: ``concurrency`` requests in flight until every clip is served; times taken here."""
    import vllm

    engine = llm.llm_engine
    params = vllm.SamplingParams(temperature=0.0, max_tokens=new_tokens, ignore_eos=True)
    pending = list(enumerate(clips))
    added, first_token, prompt_tokens, output_tokens = {}, {}, [], 0

    def add() -> None:
        index, clip = pending.pop(0)
        added[str(index)] = time.perf_counter()
        engine.add_request(str(index), {"prompt": text, "multi_modal_data": {"video": clip}}, params)

    start = time.perf_counter()
    for _ in range(min(concurrency, len(pending))):
        add()
    while engine.has_unfinished_requests():
        for output in engine.step():
            now = time.perf_counter()
            if output.outputs and output.outputs[0].token_ids and output.request_id not in first_token:
                first_token[output.request_id] = now - added[output.request_id]
            if output.finished:
                prompt_tokens.append(len(output.prompt_token_ids))
                output_tokens += len(output.outputs[0].token_ids)
                if pending:
                    add()
    wall = time.perf_counter() - start
    if len(prompt_tokens) != len(clips):
        raise RuntimeError(f"{len(prompt_tokens)} of {len(clips)} requests finished")
    return dict(requests_per_s=len(clips) / wall, prompt_tokens_per_s=sum(prompt_tokens) / wall,
                output_tokens_per_s=output_tokens / wall, mean_ttft_ms=1e3 * sum(first_token.values()) / len(clips),
                prompt_tokens=sorted(set(prompt_tokens)), wall_s=wall)


def plot(rows: list[dict], llm: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted({r["concurrency"] for r in rows})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for axis, key, label in ((axes[0], "requests_per_s", "requests / s"), (axes[1], "mean_ttft_ms", "mean TTFT (ms)")):
        for offset, engine in ((-0.2, "vanilla"), (0.2, "holitom")):
            values = [next(r[key] for r in rows if r["engine"] == engine and r["concurrency"] == c) for c in levels]
            axis.bar([i + offset for i in range(len(levels))], values, width=0.4, label=engine)
        axis.set_xticks(range(len(levels)), [str(c) for c in levels])
        axis.set_xlabel("concurrent video requests")
        axis.set_ylabel(label)
    axes[0].legend()
    fig.suptitle(f"vLLM (CPU build), {llm} LLaVA-OneVision: HoliTom plugin vs vanilla")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests", type=int, default=32, help="requests served at each concurrency")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (64x64: 16 tokens each)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per engine and concurrency (medians)")
    parser.add_argument("--new-tokens", type=int, default=8)
    parser.add_argument("--llm", choices=sorted(LLMS), default="tiny",
                        help="the text model: tiny (2 layers, 128 wide) or small (8 layers, 512 wide)")
    parser.add_argument("--retain-ratio", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    if min(args.concurrency) < 1 or min(args.requests, args.frames, args.repeats) < 1:
        parser.error("--concurrency, --requests, --frames and --repeats take positive integers")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from holitom_fx import tiny_checkpoints
    from holitom_fx.vllm_plugin.common import holitom_config

    settings = {"retain_ratio": args.retain_ratio, "tau": 0.8}
    holitom_config(type("HF", (), {"holitom": settings}))  # a bad setting fails here, before two engines start
    path = tiny_checkpoints.llava_onevision(tempfile.mkdtemp(prefix="holitom_tiny_llava_"), **LLMS[args.llm])
    text = prompt_text(path)
    engines = {"vanilla": make_engine(path, None, max(args.concurrency)),
               "holitom": make_engine(path, settings, max(args.concurrency))}
    for llm in engines.values():  # warm-up at every batch size: first-call costs stay out of the timed loops
        for concurrency in args.concurrency:
            warm = [tiny_checkpoints.video(args.frames, 64, seed=10**6 + i) for i in range(concurrency)]
            serve(llm, text, warm, concurrency, 2)
    runs = {(name, c): [] for c in args.concurrency for name in engines}
    seed = 0
    for concurrency in args.concurrency:
        for repeat in range(args.repeats):
            for name in list(engines)[::1 if repeat % 2 == 0 else -1]:  # the order flips every repeat
                clips = [tiny_checkpoints.video(args.frames, 64, seed=seed + i) for i in range(args.requests)]
                seed += args.requests
                runs[name, concurrency].append(serve(engines[name], text, clips, concurrency, args.new_tokens))
    rows = [dict(engine=name, concurrency=c, **{key: statistics.median(r[key] for r in measured)
                                                 for key in MEDIAN_KEYS},
                 prompt_tokens=sorted({n for r in measured for n in r["prompt_tokens"]}),
                 requests_per_s_runs=[r["requests_per_s"] for r in measured])
            for (name, c), measured in runs.items()]
    del engines
    gc.collect()
    header = f"{'c':>3} {'engine':>8} {'req/s':>7} {'prompt tok/s':>13} {'out tok/s':>10} {'TTFT ms':>8} {'prompt':>7}"
    print(header)
    for row in rows:
        vanilla = next(r for r in rows if r["engine"] == "vanilla" and r["concurrency"] == row["concurrency"])
        ratio = row["requests_per_s"] / vanilla["requests_per_s"]
        print(f"{row['concurrency']:>3} {row['engine']:>8} {row['requests_per_s']:>7.2f} "
              f"{row['prompt_tokens_per_s']:>13.0f} {row['output_tokens_per_s']:>10.1f} {row['mean_ttft_ms']:>8.1f} "
              f"{'/'.join(map(str, row['prompt_tokens'])):>7}" + ("" if row["engine"] == "vanilla" else f"  {ratio:.2f}x"))
    args.out.mkdir(parents=True, exist_ok=True)
    import vllm

    meta = dict(date=datetime.date.today().isoformat(), machine=platform.processor() or platform.machine(),
                cpus=os.cpu_count(), vllm=vllm.__version__, frames=args.frames, requests=args.requests,
                new_tokens=args.new_tokens, llm=args.llm, repeats=args.repeats, settings=settings)
    (args.out / "vllm_throughput.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))
    try:
        plot(rows, args.llm, args.out / "vllm_throughput.png")
    except ImportError:
        log.warning("matplotlib is not installed: no plot written (pip install matplotlib)")
    log.info("wrote %s", args.out / "vllm_throughput.json")
    return rows


if __name__ == "__main__":
    main()
