"""Time to first token (vision / HoliTom / LLM) and decode tokens/s, vanilla-compiled vs HoliTom-compiled.

    python benchmarks/latency.py --threads 1               # CPU preset: ~4 minutes, mostly compilation
    python benchmarks/latency.py --preset 7b --device cuda # LLaVA-OneVision-7B dims, random bf16 weights, 32 frames
    python benchmarks/latency.py --preset tiny --compiler eager   # seconds: a smoke run, timings meaningless
    python benchmarks/latency.py --kv-fake                 # KV cache per request at 7B dims, fake tensors

Presets: ``cpu`` is a random LLaVA-OneVision with an 8-layer, 512-wide Qwen2 LLM and a 4-layer,
128-wide SigLIP at 224 px (64 tokens per frame), 16 frames, so the 1039-token prefill dominates
TTFT; ``7b`` has llava-onevision-qwen2-7b-ov's dimensions (``holitom_fx.flops.llava_onevision_7b_config``:
Qwen2-7B, SigLIP-so400m at 384 px, 196 tokens per frame), random bf16 weights built on the device.
On a CPU whose cores other work shares, ``--threads 1``: two OpenMP threads stall at every
parallel region when one core is taken (decode measured 5x slower that way).

Two fresh instances of the same random-weight LLaVA-OneVision (same seed) are compiled once in
one process and stay compiled while their timed runs alternate (the order flips every repeat),
so machine noise hits both alike; medians are reported. Graph counts are checked after the
warm-up and after the timed runs: a recompilation during timing is logged as a warning and
recorded in the JSON (``graphs``).

* **vanilla**: ``model.compile(backend="inductor")`` and the vision tower compiled the same way
  (``holitom_fx.compile`` compiles the vision tower too, because ``generate()`` encodes the
  video outside ``forward``; compiling it in both keeps the vision bars comparable).
* **HoliTom**: ``holitom_fx.compile(model, HoliTomConfig(...))``.

Each timed run is one ``model.generate(max_new_tokens=N, min_new_tokens=N, do_sample=False)``, every variant the
same call. A ``StoppingCriteria`` takes a timestamp (after a device sync) each time a token
is appended: **TTFT** is the time from the call to the first token (video encoding, prefill,
first greedy pick), **decode tokens/s** is ``(N - 1) / (t_N - t_1)``.

TTFT is split into three stacked parts that add up to the measured TTFT:

* **vision**: ``model.model.get_video_features(pixel_values_videos=...)`` timed on its own, the
  call ``generate()`` makes before the prefill (compiled vision tower, projector, pooling, newline).
* **HoliTom**: the time of the nodes the passes insert, which Inductor fuses with the model's
  own kernels, so it cannot be read off the model's run. It is measured as those nodes alone,
  compiled with Inductor at the run's exact shapes, dtype and config: the vision saliency
  (``ops.attention_received`` + ``ops.pool_saliency`` on the feeding encoder layer's q/k), the outer
  stage (``ops.stages.outer_stage``) and the inner stage (``ops.stages.inner_stage`` plus the rotary
  cos/sin gathers for layers K..). The saliency part runs inside the vision graph, so it is
  moved from HoliTom's vision time into this bar; the difference of the two vision times
  (``vision_delta_ms`` in the JSON) is an in-graph cross-check of it.
  Alternatives considered: a TTFT difference against a HoliTom graph with r = 1 and the inner
  stage off is a small difference of two large, noisy numbers and merges at another budget;
  profiler kernel names cannot be attributed to HoliTom's nodes once fused.
* **LLM**: the rest, ``TTFT - vision - merge``: the prefill of the decoder layers on the (merged)
  sequence, ``lm_head`` and ``generate()``'s own per-call work (the same in both variants).

HoliTom's nodes are also timed eagerly (``holitom_nodes_ms`` in the JSON). For HoliTom's own cost at
32 x 196 x 3584 outside a model (issue 5.3) see ``benchmarks/bench_ops.py``, which this script
reuses for its synthetic features and the saliency node; the ``7b`` preset measures the same size inside the latency run.

**KV cache**: after the timed runs, one ``generate(max_new_tokens=1)`` per variant returns its cache; its keys
and values, summed over layers, are the KV bytes a request holds after its prefill, compared with what the
token counts predict (``kv`` in the JSON, with how many requests fit in ``--kv-memory-gib``). ``--kv-fake``
computes only that, at LLaVA-OneVision-7B dimensions, from one prefill on fake tensors (seconds, no memory).

Writes ``latency.json`` and ``latency.png`` (grouped bars in the style of the paper's TTFT figure:
vanilla vs HoliTom, stacked vision / HoliTom / LLM, speed-ups written above; decode tokens/s
beside it) under ``--out`` and prints a table.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict, astuple
from pathlib import Path
from typing import Any, Callable

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_ops import saliency_step, synthetic_video  # noqa: E402

import holitom_fx  # noqa: E402
from holitom_fx import HoliTomBackend, HoliTomConfig  # noqa: E402
from holitom_fx.archs import layout_for  # noqa: E402
from holitom_fx.flops import predicted_kv_bytes  # noqa: E402
from holitom_fx.ops import exact_budget, gather_tokens, last_query_attention  # noqa: E402
from holitom_fx.ops.stages import inner_stage, outer_stage  # noqa: E402
from holitom_fx.tiny import synthetic_clip, video_prompt  # noqa: E402
from passes.specialize import is_symbolic  # noqa: E402

log = logging.getLogger("latency")

#: Model presets. ``cpu``: big enough that the LLM prefill dominates TTFT, small enough for 2 cores.
#: ``7b``: llava-onevision-qwen2-7b-ov dimensions (``holitom_fx.flops.llava_onevision_7b_config``).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(model=dict(layers=4, hidden=64, image_size=56), frames=4, new_tokens=4, repeats=1),
    "cpu": dict(model=dict(layers=8, hidden=512, heads=8, kv_heads=2, intermediate=1536, image_size=224,
                           vision_hidden=128, vision_layers=4, vision_heads=4, vocab=1000),
                frames=16, new_tokens=16, repeats=5),
    "7b": dict(model=None, frames=32, new_tokens=32, repeats=10),
}
#: Text around the video, as in ``holitom_fx.flops``: 5 tokens before it, 9 after (a short question).
TEXT_BEFORE, TEXT_AFTER = 5, 9


# ---------------------------------------------------------------------------------------------
# Models and inputs


def build_model(preset: str, seed: int, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """A fresh random-weight LLaVA-OneVision of the preset, eval mode, on ``device`` in ``dtype``."""
    if PRESETS[preset]["model"] is not None:
        from holitom_fx.tiny import tiny_llava_onevision

        return tiny_llava_onevision(seed=seed, **PRESETS[preset]["model"]).to(device, dtype)
    from transformers import LlavaOnevisionForConditionalGeneration

    from holitom_fx.flops import llava_onevision_7b_config

    torch.manual_seed(seed)
    with torch.device(device):  # initialised on the device, directly in the target dtype
        model = LlavaOnevisionForConditionalGeneration._from_config(llava_onevision_7b_config(), dtype=dtype)
    return model.to(device, dtype).eval()


def make_inputs(model: torch.nn.Module, frames: int, device: torch.device, dtype: torch.dtype) -> dict:
    """One prompt: 5 text tokens, the video placeholders, 9 text tokens; a synthetic moving-square clip."""
    size = model.config.vision_config.image_size
    vocab = model.config.text_config.vocab_size
    text = [(7 * i + 1) % (vocab - 3) + 1 for i in range(TEXT_BEFORE + TEXT_AFTER)]  # below the special ids
    ids = video_prompt(model, frames, text[:TEXT_BEFORE], text[TEXT_BEFORE:]).to(device)
    pixels = synthetic_clip(frames, size)[None].to(device, dtype)
    return dict(input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values_videos=pixels)


class CountingBackend:
    """Inductor (or, for smoke tests, the FX graph as is), counting graphs and which have symbolic shapes."""

    def __init__(self, compiler: str = "inductor") -> None:
        self.compiler = compiler
        self.graphs: list[bool] = []  # per graph compiled: whether it has a symbolic size

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        from torch._inductor.compile_fx import compile_fx

        self.graphs.append(is_symbolic(gm))
        return compile_fx(gm, example_inputs) if self.compiler == "inductor" else gm.forward


def compile_vanilla(model: torch.nn.Module, compiler: str = "inductor") -> CountingBackend:
    """``model.compile(backend="inductor")``, its vision tower compiled the same way."""
    backend = CountingBackend(compiler)
    torch._dynamo.config.capture_scalar_outputs = True  # as holitom_fx.compile: the forward stays one graph
    model.get_submodule(layout_for(model.config).vision_tower).compile(backend=backend)
    model.compile(backend=backend)
    return backend


def compile_holitom(model: torch.nn.Module, config: HoliTomConfig, compiler: str = "inductor") -> HoliTomBackend:
    """``holitom_fx.compile(model, config)``; with ``compiler="eager"`` the same binding, graphs run uncompiled."""
    if compiler == "inductor":
        return holitom_fx.compile(model, config)
    torch._dynamo.config.capture_scalar_outputs = True
    backend = HoliTomBackend(config, compiler="eager").bind(model)
    model.get_submodule(layout_for(model.config).vision_tower).compile(backend=backend)
    model.compile(backend=backend)
    return backend


# ---------------------------------------------------------------------------------------------
# Timing


def device_sync(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


class TokenClock:
    """A ``StoppingCriteria`` that never stops: it timestamps every generated token (after a sync)."""

    def __init__(self, sync: Callable[[], None]):
        from transformers import StoppingCriteria

        clock = self
        self.sync = sync
        self.stamps: list[float] = []

        class _Criteria(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                clock.sync()
                clock.stamps.append(time.perf_counter())
                return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

        self.criteria = _Criteria()


def timed_generate(model: torch.nn.Module, inputs: dict, new_tokens: int, sync: Callable[[], None]) -> dict:
    """One greedy ``generate()``: TTFT (s), decode tokens/s, the tokens."""
    from transformers import StoppingCriteriaList

    clock = TokenClock(sync)
    sync()
    start = time.perf_counter()
    out = model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         stopping_criteria=StoppingCriteriaList([clock.criteria]))
    stamps = clock.stamps
    if len(stamps) != new_tokens:
        raise RuntimeError(f"expected {new_tokens} token timestamps, got {len(stamps)}")
    decode = (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else float("nan")
    return dict(ttft=stamps[0] - start, decode_tok_s=decode, tokens=out[0, inputs["input_ids"].shape[1]:].tolist())


def prefill_kv(model: torch.nn.Module, inputs: dict) -> tuple[int, list[int]]:
    """``(bytes, tokens per layer)`` of the KV cache one request holds after its prefill, read off the cache
    object ``generate()`` returns (one new token: the prefill alone has filled the cache)."""
    from holitom_fx.flops import kv_cache_bytes

    out = model.generate(**inputs, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
    return kv_cache_bytes(out.past_key_values)


def kv_record(measured: dict[str, tuple[int, list[int]]], predicted: dict[str, int], memory_gib: float,
              source: str) -> dict:
    """KV bytes per request after prefill, vanilla vs HoliTom, what the token counts predict, and how many
    requests' caches fit in ``memory_gib``."""
    budget = memory_gib * 2**30
    return dict(source=source, memory_gib=memory_gib, ratio=measured["holitom"][0] / measured["vanilla"][0], **{
        name: dict(bytes=size, tokens_per_layer=tokens, predicted_bytes=predicted[name],
                   error=size / predicted[name] - 1.0, concurrent_videos=int(budget // size))
        for name, (size, tokens) in measured.items()})


def predicted_tokens(report, layers: int) -> list[int]:
    """Tokens each decoder layer caches, from HoliTom's report: L' up to layer K, L'' from K on."""
    _, outer, inner = report.sequence_length
    k = report.inner_layer if report.inner_layer is not None else layers
    return [outer] * k + [inner] * (layers - k)


def fake_kv(args: argparse.Namespace) -> dict:
    """The KV record at LLaVA-OneVision-7B dimensions, from one prefill on fake tensors (no memory, no timing)."""
    from holitom_fx.flops import fake_prefill_kv, llava_onevision_7b_config, predicted_kv_bytes

    model_config, frames = llava_onevision_7b_config(), args.frames or PRESETS["7b"]["frames"]
    config = HoliTomConfig(retain_ratio=args.retain_ratio, tau=args.tau)
    vanilla, holitom = fake_prefill_kv(model_config, frames, None), fake_prefill_kv(model_config, frames, config)
    text = model_config.text_config
    layers = text.num_hidden_layers
    predicted = {"vanilla": predicted_kv_bytes([holitom[2].sequence_length[0]] * layers, text, torch.bfloat16),
                 "holitom": predicted_kv_bytes(predicted_tokens(holitom[2], layers), text, torch.bfloat16)}
    return dict(preset="7b", frames=frames, holitom=asdict(config), kv=kv_record(
        {"vanilla": vanilla[:2], "holitom": holitom[:2]}, predicted, args.kv_memory_gib,
        "one prefill on fake tensors (FakeTensorMode), bf16"))


def timed_vision(model: torch.nn.Module, inputs: dict, sync: Callable[[], None]) -> float:
    """The video encoding ``generate()`` runs before the prefill, alone (s)."""
    sync()
    start = time.perf_counter()
    model.model.get_video_features(pixel_values_videos=inputs["pixel_values_videos"], return_dict=True)
    sync()
    return time.perf_counter() - start


@contextlib.contextmanager
def quiet(name: str):
    """Raise a logger to WARNING for a while, then put its level back."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def timed_call(fn: Callable[[], Any], sync: Callable[[], None]) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------
# HoliTom's own nodes, alone, at the run's shapes


def holitom_nodes(model: torch.nn.Module, config: HoliTomConfig, frames: int, length: int, device: torch.device,
                  dtype: torch.dtype) -> tuple[dict[str, Callable[..., Any]], dict[str, tuple]]:
    """HoliTom's inserted nodes as two functions (vision saliency; outer + inner merge) and their inputs.

    Shapes follow the graphs the passes rewrite for this model and prompt: the encoder layer's
    q/k ``[T, H_v, P, D_v]``; the scattered prompt ``[1, L, E]``, its mask, the ``T*N + 1`` video
    features and the saliency ``[T, N]`` (the runtime input the vision graph hands over); layer
    K-1's q/k ``[1, H, L', D]`` (the prefill's SDPA call has no explicit mask: causal) and the
    rotary cos/sin ``[1, L', D]`` layers K.. read, gathered to the kept tokens.
    """
    layout = layout_for(model.config)
    vision, text = model.config.vision_config, model.config.text_config
    grid = layout.saliency_grid(model.config)
    per_frame = layout.tokens_per_frame(model.config)
    hidden = text.hidden_size
    generator = torch.Generator().manual_seed(1)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(device, dtype)

    vision_head = vision.hidden_size // vision.num_attention_heads
    patches = grid.drop_leading + grid.side ** 2
    saliency_inputs = (randn(frames, vision.num_attention_heads, patches, vision_head),
                       randn(frames, vision.num_attention_heads, patches, vision_head), None, vision_head ** -0.5,
                       grid.drop_leading, grid.side, grid.pooled_side)

    features, saliency = synthetic_video(frames, per_frame, hidden, device, dtype)
    span = frames * per_frame + layout.pass_through_tokens
    embeds = randn(1, length, hidden)
    mask = torch.zeros(1, length, 1, dtype=torch.bool, device=device)
    mask[:, TEXT_BEFORE:TEXT_BEFORE + span] = True
    video = torch.cat([features.reshape(-1, hidden), randn(layout.pass_through_tokens, hidden)])
    merged = exact_budget(frames, per_frame, config.retain_ratio) + layout.pass_through_tokens
    merged_length = length - span + merged
    heads, kv_heads = text.num_attention_heads, text.num_key_value_heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    inner = config.resolve_inner_layer(text.num_hidden_layers) is not None
    merge_inputs = (embeds, mask, video, frames, per_frame, layout.pass_through_tokens,
                    astuple(config), saliency.float(), torch.ones((), dtype=torch.bool, device=device),
                    randn(1, heads, merged_length, head_dim), randn(1, kv_heads, merged_length, head_dim),
                    head_dim ** -0.5, merged, randn(1, merged_length, head_dim), randn(1, merged_length, head_dim),
                    inner, config.inner_ratio)
    return dict(saliency=saliency_step, merge=_merge_nodes), dict(saliency=saliency_inputs, merge=merge_inputs)


def _merge_nodes(embeds, mask, video, frames, per_frame, pass_through, config_fields, saliency, valid, query, key,
                 scale, merged, cos, sin, inner, inner_ratio):
    spliced, _, span_start, _, _ = outer_stage(embeds, mask, video, frames, per_frame, pass_through, config_fields,
                                               saliency, valid)
    if not inner:
        return spliced
    hidden, keep = inner_stage(spliced, last_query_attention(query, key, None, scale), span_start, merged, inner_ratio)
    return hidden, gather_tokens(cos, keep, (1,)), gather_tokens(sin, keep, (1,))


# ---------------------------------------------------------------------------------------------
# The run


def run(args: argparse.Namespace) -> dict:
    """Compile both variants, warm up, alternate the timed runs; returns the JSON record."""
    started = time.perf_counter()
    preset = PRESETS[args.preset]
    frames = args.frames or preset["frames"]
    new_tokens = args.new_tokens or preset["new_tokens"]
    repeats = args.repeats or preset["repeats"]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    sync = device_sync(device)
    if args.threads:  # before compiling: Inductor's C++ kernels take their OpenMP thread count from it
        torch.set_num_threads(args.threads)
    config = HoliTomConfig(retain_ratio=args.retain_ratio, tau=args.tau)

    torch._dynamo.reset()  # once: both variants then stay compiled side by side
    # Four modules compiled in one process share nn.Module._call_impl's code object, whose cache holds
    # vision, prefill, first-decode and decode graphs of each: more than the default limit of 8.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)

    models, compiled = {}, {}
    t0 = time.perf_counter()
    models["vanilla"] = build_model(args.preset, args.seed, device, dtype)
    models["holitom"] = build_model(args.preset, args.seed, device, dtype)
    inputs = make_inputs(models["vanilla"], frames, device, dtype)
    log.info("built two %s models (%s, %s) in %.1f s; prompt %d tokens", args.preset, device, dtype,
             time.perf_counter() - t0, inputs["input_ids"].shape[1])

    vanilla_backend = compile_vanilla(models["vanilla"], args.compiler)
    holitom_backend = compile_holitom(models["holitom"], config, args.compiler)
    graph_count = {"vanilla": lambda: len(vanilla_backend.graphs), "holitom": lambda: len(holitom_backend.graphs)}

    # Warm-up. Vanilla first: the shared code object's automatic-dynamic state then marks the sequence
    # length dynamic (its decode steps) before HoliTom's prefill is traced, and the HoliTom backend
    # specializes that prefill back to static shapes; the other order would hand vanilla a symbolic prefill.
    with torch.no_grad():
        for name in ("vanilla", "holitom"):
            t0 = time.perf_counter()
            timed_generate(models[name], inputs, new_tokens, sync)
            compiled[name] = time.perf_counter() - t0
            timed_generate(models[name], inputs, new_tokens, sync)
            timed_vision(models[name], inputs, sync)
            log.info("%s: compiled and warmed up in %.1f s (%d graphs)", name, compiled[name], graph_count[name]())
        log.info("vanilla graphs with a symbolic shape: %s", vanilla_backend.graphs)
        report = holitom_backend.last_report

        length = inputs["input_ids"].shape[1]
        node_fns, node_inputs = holitom_nodes(models["holitom"], config, frames, length, device, dtype)
        node_variants = {}
        for part, fn in node_fns.items():
            node_variants[f"{part}_compiled"] = (torch.compile(fn, fullgraph=True, backend=args.compiler),
                                                 node_inputs[part])
            node_variants[f"{part}_eager"] = (fn, node_inputs[part])
        t0 = time.perf_counter()
        for fn, fn_inputs in node_variants.values():
            fn(*fn_inputs)
        log.info("HoliTom nodes alone: compiled and warmed up in %.1f s", time.perf_counter() - t0)

        graphs_warm = {name: count() for name, count in graph_count.items()}
        samples: dict[str, list[float]] = {key: [] for key in (
            "vanilla_ttft", "holitom_ttft", "vanilla_vision", "holitom_vision", "vanilla_decode", "holitom_decode",
            *node_variants)}
        with quiet("holitom_fx"):  # no INFO line per timed prefill
            for repeat in range(repeats):
                order = ("vanilla", "holitom") if repeat % 2 == 0 else ("holitom", "vanilla")
                for name in order:
                    samples[f"{name}_vision"].append(timed_vision(models[name], inputs, sync))
                    result = timed_generate(models[name], inputs, new_tokens, sync)
                    samples[f"{name}_ttft"].append(result["ttft"])
                    samples[f"{name}_decode"].append(result["decode_tok_s"])
                for key, (fn, fn_inputs) in node_variants.items():
                    samples[key].append(timed_call(lambda: fn(*fn_inputs), sync))
                log.info("repeat %d/%d: TTFT vanilla %.1f ms, HoliTom %.1f ms", repeat + 1, repeats,
                         samples["vanilla_ttft"][-1] * 1e3, samples["holitom_ttft"][-1] * 1e3)
        graphs_done = {name: count() for name, count in graph_count.items()}
        kv = {name: prefill_kv(models[name], inputs) for name in ("vanilla", "holitom")}
    for name in graphs_warm:
        if graphs_done[name] != graphs_warm[name]:
            log.warning("%s compiled %d more graph(s) during the timed runs", name, graphs_done[name] - graphs_warm[name])

    med = {key: statistics.median(values) * (1 if key.endswith("_decode") else 1e3) for key, values in samples.items()}
    breakdown = {
        "vanilla": dict(vision_ms=med["vanilla_vision"], holitom_ms=0.0,
                        llm_ms=med["vanilla_ttft"] - med["vanilla_vision"], ttft_ms=med["vanilla_ttft"],
                        decode_tok_s=med["vanilla_decode"]),
        "holitom": dict(vision_ms=med["holitom_vision"] - med["saliency_compiled"],
                        holitom_ms=med["saliency_compiled"] + med["merge_compiled"],
                        llm_ms=med["holitom_ttft"] - med["holitom_vision"] - med["merge_compiled"],
                        ttft_ms=med["holitom_ttft"], decode_tok_s=med["holitom_decode"]),
    }
    text = models["holitom"].config.text_config
    vision = models["holitom"].config.vision_config
    record = dict(
        date=datetime.date.today().isoformat(), machine=dict(
            platform=platform.platform(), device=str(device), device_name=torch.cuda.get_device_name(device)
            if device.type == "cuda" else _cpu_name(),
            threads=torch.get_num_threads(), torch=torch.__version__, transformers=_transformers_version(),
            load_average=list(os.getloadavg()) if hasattr(os, "getloadavg") else None),
        compiler=args.compiler,
        command=" ".join(["python", "benchmarks/latency.py", *sys.argv[1:]]) if args.record_command else None,
        preset=args.preset, model=dict(
            llm_layers=text.num_hidden_layers, llm_hidden=text.hidden_size, llm_intermediate=text.intermediate_size,
            llm_heads=text.num_attention_heads, llm_kv_heads=text.num_key_value_heads,
            vision_layers=vision.num_hidden_layers, vision_hidden=vision.hidden_size, image_size=vision.image_size,
            patch_size=vision.patch_size, dtype=str(dtype).removeprefix("torch."),
            parameters=sum(p.numel() for p in models["holitom"].parameters())),
        frames=frames, prompt_tokens=length, new_tokens=new_tokens, repeats=repeats,
        holitom=dict(asdict(config), tokens_in=report.tokens_in, tokens_after_outer=report.tokens_after_outer,
                     tokens_after_inner=report.tokens_after_inner, inner_layer=report.inner_layer,
                     sequence_length=list(report.sequence_length), saliency=report.saliency,
                     segments=report.segments[0]),
        breakdown=breakdown,
        speedup=dict(ttft=med["vanilla_ttft"] / med["holitom_ttft"],
                     llm=breakdown["vanilla"]["llm_ms"] / breakdown["holitom"]["llm_ms"],
                     decode=med["holitom_decode"] / med["vanilla_decode"]),
        holitom_nodes_ms=dict(compiled={p: med[f"{p}_compiled"] for p in node_fns},
                              eager={p: med[f"{p}_eager"] for p in node_fns}),
        vision_delta_ms=med["holitom_vision"] - med["vanilla_vision"],
        kv=kv_record(kv, {"vanilla": predicted_kv_bytes([length] * text.num_hidden_layers, text, dtype),
                          "holitom": predicted_kv_bytes(predicted_tokens(report, text.num_hidden_layers), text, dtype)},
                     args.kv_memory_gib, "the cache generate() returns after its prefill"),
        compile_and_first_generate_s=compiled,
        graphs=dict(after_warmup=graphs_warm, after_timing=graphs_done,
                    vanilla_symbolic=vanilla_backend.graphs, holitom_fallbacks=holitom_backend.fallbacks,
                    holitom_saliency_fallbacks=holitom_backend.saliency_fallbacks),
        samples={key: [v * (1 if key.endswith("_decode") else 1e3) for v in values] for key, values in samples.items()},
        wall_s=time.perf_counter() - started,
    )
    return record


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
        return f"{names[0]} ({len(names)} cores)" if names else platform.machine()
    except OSError:
        return platform.processor() or platform.machine()


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


# ---------------------------------------------------------------------------------------------
# Output


def print_table(record: dict) -> None:
    b, h = record["breakdown"], record["holitom"]
    m = record["model"]
    print(f"\nLLaVA-OneVision ({record['preset']}: LLM {m['llm_layers']}x{m['llm_hidden']}, vision "
          f"{m['vision_layers']}x{m['vision_hidden']}, {m['dtype']}, random weights) on {record['machine']['device']}, "
          f"{record['frames']} frames, prompt {record['prompt_tokens']} tokens, medians of {record['repeats']}")
    print(f"HoliTom r={h['retain_ratio']} tau={h['tau']}: visual tokens {h['tokens_in']} -> {h['tokens_after_outer']}"
          f" (outer) -> {h['tokens_after_inner']} (inner, layer {h['inner_layer']}), saliency: {h['saliency']}")
    header = (f"{'variant':<9} {'vision ms':>10} {'HoliTom ms':>11} {'LLM ms':>9} {'TTFT ms':>9} {'speed-up':>9} "
              f"{'decode tok/s':>13} {'speed-up':>9}")
    print(header)
    print("-" * len(header))
    for name, label in (("vanilla", "vanilla"), ("holitom", "HoliTom")):
        row = b[name]
        print(f"{label:<9} {row['vision_ms']:>10.1f} {row['holitom_ms']:>11.1f} {row['llm_ms']:>9.1f} "
              f"{row['ttft_ms']:>9.1f} {b['vanilla']['ttft_ms'] / row['ttft_ms']:>8.2f}x "
              f"{row['decode_tok_s']:>13.1f} {row['decode_tok_s'] / b['vanilla']['decode_tok_s']:>8.2f}x")
    nodes = record["holitom_nodes_ms"]
    print(f"HoliTom nodes alone (ms, compiled / eager): saliency {nodes['compiled']['saliency']:.1f} / "
          f"{nodes['eager']['saliency']:.1f}, outer+inner merge {nodes['compiled']['merge']:.1f} / "
          f"{nodes['eager']['merge']:.1f}; vision graph HoliTom - vanilla: {record['vision_delta_ms']:.1f} ms")


def print_kv(kv: dict) -> None:
    print(f"KV cache per request after prefill ({kv['source']}); concurrent videos in {kv['memory_gib']:g} GiB")
    print(f"{'variant':<8} {'MiB':>10} {'predicted MiB':>14} {'error':>8} {'videos':>7}")
    for name in ("vanilla", "holitom"):
        row = kv[name]
        print(f"{name:<8} {row['bytes'] / 2**20:>10.2f} {row['predicted_bytes'] / 2**20:>14.2f} "
              f"{row['error']:>8.2%} {row['concurrent_videos']:>7d}")
    print(f"HoliTom / vanilla: {kv['ratio']:.2%}")


def plot(record: dict, path: Path) -> bool:
    """The paper's TTFT figure style: vanilla vs HoliTom bars stacked vision / HoliTom / LLM; decode tok/s."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed (the bench extra): no plot")
        return False
    b = record["breakdown"]
    names, labels = ("vanilla", "holitom"), ("Vanilla", "HoliTom")
    colors = {"vision_ms": "#9ecae1", "holitom_ms": "#d62728", "llm_ms": "#3182bd"}
    parts = {"vision_ms": "vision encoder", "holitom_ms": "HoliTom", "llm_ms": "LLM prefill"}
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(7.5, 3.9), gridspec_kw=dict(width_ratios=(3, 2)))
    bottom = [0.0, 0.0]
    top = max(b[n]["ttft_ms"] for n in names)
    for part, label in parts.items():
        values = [max(b[n][part], 0.0) for n in names]
        ax.bar(labels, values, bottom=bottom, color=colors[part], label=label, width=0.55, edgecolor="white")
        for i, value in enumerate(values):
            if value > 0.07 * top:  # the part's time inside its segment, where it fits
                ax.text(i, bottom[i] + value / 2, f"{value:.0f}", ha="center", va="center", fontsize=8,
                        color="white" if part == "llm_ms" else "black")
        bottom = [x + v for x, v in zip(bottom, values)]
    for i, n in enumerate(names):
        note = f"{b[n]['ttft_ms']:.0f} ms" + ("" if n == "vanilla" else
                                              f"\n{b['vanilla']['ttft_ms'] / b[n]['ttft_ms']:.2f}x faster")
        ax.text(i, bottom[i] + 0.02 * top, note, ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, top * 1.25)
    ax.set_ylabel("time to first token (ms)")
    ax.set_title("TTFT")
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    decode = [b[n]["decode_tok_s"] for n in names]
    ax2.bar(labels, decode, color=["#969696", "#d62728"], width=0.55)
    for i, value in enumerate(decode):
        note = f"{value:.1f}" + ("" if i == 0 else f"\n{value / decode[0]:.2f}x")
        ax2.text(i, value + 0.02 * max(decode), note, ha="center", va="bottom", fontsize=9)
    ax2.set_ylim(0, max(decode) * 1.3)
    ax2.set_ylabel("decode tokens / s")
    ax2.set_title("Decode throughput")
    m, h = record["model"], record["holitom"]
    where = record["machine"]["device"]
    where = f"{where}, {record['machine']['threads']} thread(s)" if where == "cpu" else record["machine"]["device_name"]
    fig.suptitle(f"LLaVA-OneVision, random weights, preset {record['preset']} (LLM {m['llm_layers']}x{m['llm_hidden']}, "
                 f"{m['dtype']}), {record['frames']} frames, {where}\nHoliTom r={h['retain_ratio']}: visual tokens "
                 f"{h['tokens_in']} -> {h['tokens_after_outer']} (outer) -> {h['tokens_after_inner']} (inner); "
                 f"medians of {record['repeats']}", fontsize=8.5)
    for axis in (ax, ax2):
        axis.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return True


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cuda = torch.cuda.is_available()
    parser.add_argument("--preset", choices=sorted(PRESETS), default="7b" if cuda else "cpu")
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", default=None, help="float32 / bfloat16 (default: fp32 on CPU, bf16 on GPU)")
    parser.add_argument("--frames", type=int, default=None, help="default: the preset's (cpu 16, 7b 32)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens per generate() (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per variant (default: the preset's)")
    parser.add_argument("--retain-ratio", type=float, default=0.10)
    parser.add_argument("--tau", type=float, default=0.65)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results"))
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 on a machine whose cores other work shares")
    parser.add_argument("--compiler", choices=("inductor", "eager"), default="inductor",
                        help="eager: Dynamo traces and HoliTom rewrites, graphs run uncompiled (smoke tests only)")
    parser.add_argument("--kv-memory-gib", type=float, default=64.0,
                        help="memory for KV caches: how many requests' caches fit (default 64 GiB)")
    parser.add_argument("--kv-fake", action="store_true",
                        help="only the KV record at LLaVA-OneVision-7B dims, on fake tensors (seconds, no memory)")
    parser.add_argument("--no-record-command", dest="record_command", action="store_false",
                        help="leave the command line out of the JSON")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Run, print the table, write the JSON and the PNG; returns the record."""
    args = parse_args(argv)
    if args.kv_fake:
        record = fake_kv(args)
        print_kv(record["kv"])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "latency_kv.json").write_text(json.dumps(record, indent=2))
        return record
    record = run(args)
    print_table(record)
    print_kv(record["kv"])
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latency.json").write_text(json.dumps(record, indent=2))
    log.info("wrote %s", args.out / "latency.json")
    if plot(record, args.out / "latency.png"):
        log.info("wrote %s", args.out / "latency.png")
    log.info("total %.1f s", record["wall_s"])
    return record


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("torch").setLevel(logging.ERROR)
    main()
