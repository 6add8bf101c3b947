"""Prefill FLOPs of LLaVA-OneVision-7B with and without HoliTom: the paper's formula and the graph.

    python -m holitom_fx.flops            # a table
    python -m holitom_fx.flops --json     # a JSON list of rows

Two figures per row:

* ``formula_tflops``: the paper's per-layer estimate ``4·n·d² + 2·n²·d + 2·n·d·m`` summed over the
  decoder layers (``../shared/HOLITOM_SPEC.md``), n = round(r·T·N) visual + 14 text tokens, the
  layers from K on with half the visual tokens for HoliTom's inner stage.
* ``graph_tflops``: FLOPs of the decoder layers of the graph the backend's passes produced, counted
  by ``torch.utils.flop_counter.FlopCounterMode`` while that graph runs. Nothing is allocated: the
  model is built on the meta device and made of fake tensors (``FakeTensorMode``); Dynamo traces a
  plain ``model(...)`` prefill call once, its graph goes to one ``HoliTomBackend`` per row (none for
  vanilla), AOTAutograd lowers each rewritten graph to ATen (as Inductor would see it) and an FX
  interpreter runs it on fake tensors, charging each node's FLOPs to the part of the model it came
  from (``nn_module_stack``; HoliTom's own nodes by the mark the passes put on them).

``layer_graph_flops`` is the closed form of what the graph counts per Qwen2 layer; the README
section compares it with the formula term by term.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx

from .config import HoliTomConfig

log = logging.getLogger("holitom_fx.flops")

#: LLaVA-OneVision-7B, as the paper measures it: 32 frames x 14x14 pooled tokens.
FRAMES = 32
TOKENS_PER_FRAME = 196
#: Text tokens of the prompt; with 14, every entry of the paper's table is reproduced within 0.1 T.
TEXT_TOKENS = 14
#: Split of the text tokens around the video (FLOPs do not depend on it): "<|im_start|>user\n" ... question.
TEXT_BEFORE = 5
RATIOS = (0.25, 0.20, 0.15, 0.10)
METHODS = ("vanilla", "holitom_wo_inner", "holitom")

#: Qwen2-7B (the language model of llava-onevision-qwen2-7b-ov).
LLM_LAYERS, LLM_HIDDEN, LLM_INTERMEDIATE = 28, 3584, 18944
INNER_LAYER, INNER_RATIO = 18, 0.5


# ---------------------------------------------------------------------------------------------
# The paper's formula


def layer_formula_flops(n: int | float, hidden: int = LLM_HIDDEN, intermediate: int = LLM_INTERMEDIATE) -> float:
    """The paper's (FastV's) per-layer prefill estimate ``4·n·d² + 2·n²·d + 2·n·d·m``."""
    return 4 * n * hidden ** 2 + 2 * n ** 2 * hidden + 2 * n * hidden * intermediate


def layer_graph_flops(n: int, hidden: int = LLM_HIDDEN, intermediate: int = LLM_INTERMEDIATE, heads: int = 28,
                      kv_heads: int = 4, head_dim: int | None = None) -> int:
    """What ``FlopCounterMode`` counts for one Qwen2 decoder layer over ``n`` tokens (2 FLOPs per MAC).

    q/o projections ``d x heads·head_dim``, k/v projections ``d x kv_heads·head_dim`` (GQA),
    a SwiGLU MLP of three ``d x m`` matrices, and attention ``QK^T`` plus ``AV`` over the full
    ``n x n`` square (SDPA's count has no causal saving). Biases and element-wise work count 0.
    """
    head_dim = head_dim if head_dim is not None else hidden // heads
    linear = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * intermediate
    return 2 * n * linear + 4 * heads * n * n * head_dim


def formula_tokens(retain_ratio: float, inner: bool, frames: int = FRAMES, tokens_per_frame: int = TOKENS_PER_FRAME,
                   text_tokens: int = TEXT_TOKENS, layers: int = LLM_LAYERS, inner_layer: int = INNER_LAYER,
                   inner_ratio: float = INNER_RATIO) -> list[int]:
    """Sequence length of every decoder layer in the formula's reading.

    Visual tokens ``round(r·T·N)`` (no trailing newline token: that is the reading that
    reproduces the paper's table best); layers ``inner_layer..`` keep
    ``round(visual·(1 − inner_ratio))`` of them when ``inner`` is set.
    """
    visual = round(retain_ratio * frames * tokens_per_frame)
    after_inner = round(visual * (1 - inner_ratio)) if inner else visual
    return [(visual if layer < inner_layer else after_inner) + text_tokens for layer in range(layers)]


def formula_tflops(retain_ratio: float, inner: bool, **kwargs: Any) -> float:
    """The paper's prefill TFLOPs of the LLM: the per-layer formula summed over the decoder layers."""
    hidden = kwargs.pop("hidden", LLM_HIDDEN)
    intermediate = kwargs.pop("intermediate", LLM_INTERMEDIATE)
    tokens = formula_tokens(retain_ratio, inner, **kwargs)
    return sum(layer_formula_flops(n, hidden, intermediate) for n in tokens) / 1e12


# ---------------------------------------------------------------------------------------------
# The model


def llava_onevision_7b_config():
    """``LlavaOnevisionConfig`` of llava-onevision-qwen2-7b-ov(-hf), built in code (no download).

    Vision: SigLIP-so400m as transformers' ``LlavaOnevisionConfig`` default has it and the HF
    checkpoint ships it: 26 encoder layers (so400m's 27th is dropped) read with
    ``vision_feature_layer=-1``, the same features as 27 layers read at -2. Hidden 1152,
    MLP 4304, 16 heads, 384 px, patch 14: 27x27 patches pooled to 14x14 = 196 tokens per frame.
    Text: Qwen2-7B, 28 layers, hidden 3584, MLP 18944, 28 heads, 4 KV heads, vocab 152064.
    """
    from transformers import LlavaOnevisionConfig

    return LlavaOnevisionConfig(
        text_config=dict(model_type="qwen2", hidden_size=LLM_HIDDEN, intermediate_size=LLM_INTERMEDIATE,
                         num_hidden_layers=LLM_LAYERS, num_attention_heads=28, num_key_value_heads=4,
                         vocab_size=152064, max_position_embeddings=32768, rope_theta=1_000_000.0,
                         tie_word_embeddings=False),
        vision_config=dict(model_type="siglip_vision_model", hidden_size=1152, intermediate_size=4304,
                           num_hidden_layers=26, num_attention_heads=16, image_size=384, patch_size=14),
        image_token_index=151646, video_token_index=151647, vision_feature_layer=-1,
        vision_feature_select_strategy="full", tie_word_embeddings=False)


def fake_model(model_config: Any, fake_mode: Any, dtype: torch.dtype = torch.bfloat16) -> torch.nn.Module:
    """``LlavaOnevisionForConditionalGeneration`` with fake parameters: shapes and dtypes, no memory.

    Built on the meta device (no initialisation work), then ``to_empty`` inside ``fake_mode``
    turns every parameter and buffer into a fake CPU tensor, which Dynamo and the HoliTom passes
    handle like real ones. Meta tensors themselves do not work: a zero-dim constant the HoliTom
    ops create on the input's device (``torch.tensor(inf, device=...)``) stays a real meta
    tensor under fake-tensor tracing and Dynamo rejects mixing it with fake ones.
    """
    from transformers import LlavaOnevisionForConditionalGeneration

    with torch.device("meta"):
        model = LlavaOnevisionForConditionalGeneration(model_config).to(dtype).eval()
    with fake_mode:
        model.to_empty(device="cpu")
    _install_output_hooks(model)
    return model


def _install_output_hooks(model: torch.nn.Module) -> None:
    """Install transformers' output-capturing hooks now instead of on the first forward.

    transformers installs them (under a ``threading.Lock`` Dynamo cannot trace) on a model's first
    call, which splits that call into several graphs; an eager warm-up call is impossible on fake
    weights. Done ahead, the forward is one graph, as after any warm-up (see TRACING_NOTES).
    """
    try:
        from transformers import PreTrainedModel
        from transformers.utils import output_capturing
        registry = output_capturing._CAN_RECORD_REGISTRY
        install = output_capturing.maybe_install_capturing_hooks
    except (ImportError, AttributeError):  # pragma: no cover - another transformers layout
        log.warning("transformers has no output_capturing hooks to install: the prefill may split into graphs")
        return
    for module in model.modules():
        if isinstance(module, PreTrainedModel) and registry.get(module):
            install(module)


# ---------------------------------------------------------------------------------------------
# Counting the graph

#: CPU kernel SDPA lowers to on CPU tensors; FlopCounterMode has formulas for the CUDA kernels only.
_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _cpu_sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """The stock SDPA count (``sdpa_flop_count``: 2 FLOPs per MAC of ``QK^T`` and ``AV``, no causal saving)."""
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def flop_counter_mode() -> "torch.utils.flop_counter.FlopCounterMode":
    """``FlopCounterMode`` that also counts the CPU SDPA kernel (the CUDA ones it counts already)."""
    from torch.utils.flop_counter import FlopCounterMode

    custom = {_CPU_SDPA: _cpu_sdpa_flop} if _CPU_SDPA is not None else {}
    return FlopCounterMode(display=False, custom_mapping=custom)


_MODULES = re.compile(r"\._modules\['([^']+)'\]")
_DECODER_LAYER = re.compile(r"language_model\.(?:model\.)?layers\.(\d+)(?:\.|$)")
_FLOPS_PART = "holitom_flops_part"


def module_part(path: str, holitom: bool = False) -> str:
    """Where a graph node's FLOPs are charged, from its innermost module path.

    ``holitom`` (nodes the passes inserted), ``vision_tower``, ``projector``, ``lm_head``,
    ``layer.<i>.<component>`` for decoder layer i (component ``attn_proj`` for q/k/v/o
    projections, ``attention`` for the rest of self-attention, ``mlp``, ``other``), else ``other``.
    """
    if holitom:
        return "holitom"
    path = _MODULES.sub(r".\1", path)
    if "vision_tower" in path:
        return "vision_tower"
    if "multi_modal_projector" in path:
        return "projector"
    if "lm_head" in path:
        return "lm_head"
    layer = _DECODER_LAYER.search(path)
    if layer is None:
        return "other"
    tail = path[layer.end():]
    if re.search(r"self_attn\.[qkvo]_proj", tail):
        component = "attn_proj"
    elif "self_attn" in tail:
        component = "attention"
    elif "mlp" in tail:
        component = "mlp"
    else:
        component = "other"
    return f"layer.{layer.group(1)}.{component}"


def _innermost_module(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return last[0] if isinstance(last, tuple) else str(last)


class _CountingInterpreter(fx.Interpreter):
    """Runs an ATen graph node by node, charging each node's FLOPs to its part of the model."""

    def __init__(self, gm: fx.GraphModule, counts: collections.Counter, ops: collections.Counter):
        super().__init__(gm)
        self.counts, self.ops = counts, ops

    def run_node(self, node: fx.Node) -> Any:
        with flop_counter_mode() as counter:
            out = super().run_node(node)
        flops = counter.get_flop_counts().get("Global", {})
        if flops:
            part = (node.meta.get("custom") or {}).get(_FLOPS_PART, "other")
            for op, value in flops.items():
                self.counts[part] += value
                self.ops[(part.split(".")[-1] if part.startswith("layer.") else part, str(op))] += value
        return out


@dataclass
class GraphCount:
    """FLOPs of one prefill graph, as executed, by part of the model (FlopCounterMode: 2 per MAC)."""

    parts: dict[str, int]  # decoder_layers, lm_head, vision_tower, projector, holitom, other
    per_layer: list[int]  # decoder layer i
    components: dict[str, int]  # decoder layers summed by component: attn_proj, attention, mlp, other
    ops: dict[str, int]  # "component/aten op" -> FLOPs, decoder layers and the rest
    sequence_length: tuple[int, int, int]  # before, after the outer stage, after the inner stage
    graphs: int
    report: Any = field(default=None, repr=False)

    @property
    def llm_tflops(self) -> float:
        """The decoder layers (what the paper's formula counts), in TFLOPs."""
        return self.parts["decoder_layers"] / 1e12


@contextlib.contextmanager
def fake_prefill(model_config: Any, frames: int, dtype: torch.dtype = torch.bfloat16,
                 model_factory: Callable[..., torch.nn.Module] = fake_model, text_before: int = TEXT_BEFORE,
                 text_after: int = TEXT_TOKENS - TEXT_BEFORE):
    """``(model, prefill inputs)`` of ``model_config`` on fake tensors, inside the fake mode (no memory): the
    video prompt (``text_before`` + ``frames`` of placeholders + ``text_after`` tokens), its attention mask
    and pixels. Dynamo is reset on entry and on exit."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    from .tiny import video_prompt

    torch._dynamo.reset()
    try:
        fake_mode = FakeTensorMode(shape_env=ShapeEnv(), allow_non_fake_inputs=True)
        model = model_factory(model_config, fake_mode, dtype)
        ids = video_prompt(model, frames, list(range(1, text_before + 1)), list(range(1, text_after + 1)))
        size = model_config.vision_config.image_size
        with fake_mode, torch.no_grad(), torch._dynamo.config.patch(capture_scalar_outputs=True):
            input_ids = fake_mode.from_tensor(ids, static_shapes=True)
            yield model, dict(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                              pixel_values_videos=torch.empty(1, frames, 3, size, size, dtype=dtype))
    finally:
        torch._dynamo.reset()


def count_prefill_flops(model_config: Any, frames: int, configs: Sequence[HoliTomConfig | None],
                        text_before: int = TEXT_BEFORE, text_after: int = TEXT_TOKENS - TEXT_BEFORE,
                        dtype: torch.dtype = torch.bfloat16, logits_to_keep: int = 1,
                        model_factory: Callable[..., torch.nn.Module] = fake_model) -> list[GraphCount]:
    """Trace one prefill ``model(input_ids, pixel_values_videos)``; count the FLOPs of its graph per config.

    Dynamo traces the call once. Its graph goes, as Dynamo hands it to a backend, to one backend
    per entry of ``configs``: ``None`` counts the unchanged graph (vanilla), a ``HoliTomConfig`` the
    graph ``HoliTomBackend(config)`` rewrote. Each result is lowered to ATen by AOTAutograd and run
    on the fake inputs with every node's FLOPs counted. ``logits_to_keep=1`` as in ``generate()``'s
    prefill. Resets Dynamo (``torch._dynamo.reset()``) before and after.
    """
    from .backend import HoliTomBackend

    if not configs:
        return []
    started = time.perf_counter()
    counters = [_Counter() for _ in configs]
    backends: list[Any] = []
    runs: list[Callable] = []
    traced: list[tuple[fx.GraphModule, list]] = []

    def fan_out(gm: fx.GraphModule, example_inputs: list) -> Callable:
        """Dynamo's backend: hand the traced graph to one backend per config; Dynamo runs the first."""
        if traced:
            raise RuntimeError(f"the prefill split into more than one graph ({len(traced) + 1} so far); the count "
                               "needs the whole forward in one graph (see _install_output_hooks)")
        traced.append((gm, list(example_inputs)))
        log.info("traced one graph of %d nodes in %.1f s", len(gm.graph.nodes), time.perf_counter() - started)
        for config, counter in zip(configs, counters):
            backend = counter.backend if config is None else \
                HoliTomBackend(config, compiler=counter.backend).bind(model)
            backends.append(backend)
            runs.append(backend(gm, list(example_inputs)))
        return runs[0]

    with fake_prefill(model_config, frames, dtype, model_factory, text_before, text_after) as (model, inputs):
        torch.compile(model, backend=fan_out)(**inputs, use_cache=False, logits_to_keep=logits_to_keep)  # runs[0]
        for run in runs[1:]:
            run(*traced[0][1])
        length = inputs["input_ids"].shape[1]

    results = []
    for config, counter, backend in zip(configs, counters, backends):
        report = backend.last_report if config is not None else None
        if config is not None and report is None:
            raise RuntimeError(f"HoliTom did not merge the graph for {config} (fallbacks: {backend.fallbacks})")
        sequence = report.sequence_length if report is not None else (length, length, length)
        results.append(counter.result(model_config.text_config.num_hidden_layers, tuple(sequence), report))
        log.info("%s: sequence %s, decoder layers %.4g TFLOPs", _label(config), sequence, results[-1].llm_tflops)
    log.info("%d count(s) in %.1f s", len(configs), time.perf_counter() - started)
    return results


# ---------------------------------------------------------------------------------------------
# KV-cache memory


def kv_cache_bytes(cache: Any) -> tuple[int, list[int]]:
    """``(bytes, tokens per layer)`` of the keys and values a transformers cache holds, read off its attention
    layers (a hybrid model's linear-attention or SSM layers hold states of a fixed size instead: not counted)."""
    layers = [layer for layer in cache.layers if getattr(layer, "keys", None) is not None]
    size = sum(t.numel() * t.element_size() for layer in layers for t in (layer.keys, layer.values))
    return size, [layer.keys.shape[-2] for layer in layers]


def predicted_kv_bytes(tokens_per_layer: Sequence[int], text_config: Any, dtype: torch.dtype) -> int:
    """What the token counts predict: keys and values of ``kv_heads x head_dim`` per token and layer."""
    head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    return sum(tokens_per_layer) * 2 * text_config.num_key_value_heads * head_dim * dtype.itemsize


def fake_prefill_kv(model_config: Any, frames: int, config: HoliTomConfig | None,
                    dtype: torch.dtype = torch.bfloat16) -> tuple[int, list[int], Any]:
    """``kv_cache_bytes`` (and HoliTom's report, None for vanilla) after one prefill ``model(..., use_cache=True)``
    of ``model_config`` on fake tensors (``fake_prefill``): vanilla (``config=None``) or under
    ``HoliTomBackend(config)``, the rewritten graph run as is."""
    from .backend import HoliTomBackend

    with fake_prefill(model_config, frames, dtype) as (model, inputs):
        backend = (lambda gm, _: gm.forward) if config is None else \
            HoliTomBackend(config, compiler="eager").bind(model)
        out = torch.compile(model, backend=backend)(**inputs, use_cache=True, logits_to_keep=1)
    report = None if config is None else backend.last_report
    if config is not None and report is None:
        raise RuntimeError(f"HoliTom did not merge the prefill for {config} (fallbacks: {backend.fallbacks})")
    return (*kv_cache_bytes(out.past_key_values), report)


def _label(config: HoliTomConfig | None) -> str:
    if config is None:
        return "vanilla"
    return f"HoliTom r={config.retain_ratio} tau={config.tau} inner={'off' if not config.inner_enabled else 'on'}"


class _Counter:
    """One config's compiler: annotate the graph, lower it to ATen, count its FLOPs when it runs."""

    def __init__(self) -> None:
        self.counts: collections.Counter = collections.Counter()
        self.ops: collections.Counter = collections.Counter()
        self.graphs = 0

    def backend(self, gm: fx.GraphModule, example_inputs: list) -> Callable:
        from torch._functorch.aot_autograd import aot_module_simplified

        for node in gm.graph.nodes:
            part = module_part(_innermost_module(node), holitom=bool(node.meta.get("holitom")))
            # A fresh dict: graph copies share their nodes' meta values. AOTAutograd copies "custom" to ATen nodes.
            node.meta["custom"] = {**(node.meta.get("custom") or {}), _FLOPS_PART: part}

        def count_aten(aten_gm: fx.GraphModule, _inputs: list) -> Callable:
            self.graphs += 1

            def run(args: list) -> Any:
                return _CountingInterpreter(aten_gm, self.counts, self.ops).boxed_run(args)

            run._boxed_call = True  # type: ignore[attr-defined]
            return run

        return aot_module_simplified(gm, example_inputs, fw_compiler=count_aten)

    def result(self, layers: int, sequence: tuple[int, int, int], report: Any) -> GraphCount:
        per_layer = [0] * layers
        components: collections.Counter = collections.Counter()
        parts = dict.fromkeys(("decoder_layers", "lm_head", "vision_tower", "projector", "holitom", "other"), 0)
        for part, flops in self.counts.items():
            if part.startswith("layer."):
                _, index, component = part.split(".")
                per_layer[int(index)] += flops
                components[component] += flops
                parts["decoder_layers"] += flops
            else:
                parts[part] += flops
        return GraphCount(parts=parts, per_layer=per_layer, components=dict(components),
                          ops={f"{part}/{op}": value for (part, op), value in sorted(self.ops.items())},
                          sequence_length=sequence, graphs=self.graphs, report=report)


# ---------------------------------------------------------------------------------------------
# The table


def holitom_config(method: str, retain_ratio: float) -> HoliTomConfig | None:
    """The HoliTom settings of a row: the released ones (tau 0.65 at 10 %, else 0.80), inner at 18/28."""
    if method == "vanilla":
        return None
    tau = 0.65 if retain_ratio <= 0.10 else 0.80
    inner = {"holitom": {"inner_layer": None, "inner_ratio": INNER_RATIO}, "holitom_wo_inner": {"inner_layer": "off"}}
    return HoliTomConfig(retain_ratio=retain_ratio, tau=tau, **inner[method])


def table(ratios: Sequence[float] = RATIOS, methods: Sequence[str] = METHODS, graph: bool = True,
          model_config: Any = None, frames: int = FRAMES) -> list[dict[str, Any]]:
    """One row per (method, ratio); vanilla is one row at ``retain_ratio`` 1.0 (it has no ratio).

    ``formula_tflops`` is always the paper's LLaVA-OneVision-7B figure; ``graph_tflops`` is counted
    on ``model_config`` (default ``llava_onevision_7b_config()``) with ``frames`` frames.
    """
    cases = [("vanilla", 1.0)] if "vanilla" in methods else []
    cases += [(m, r) for r in ratios for m in METHODS if m != "vanilla" and m in methods]
    rows = [{"method": method, "retain_ratio": ratio,
             "formula_tflops": _significant(formula_tflops(ratio, inner=method == "holitom"))}
            for method, ratio in cases]
    if not graph:
        return rows
    model_config = model_config if model_config is not None else llava_onevision_7b_config()
    counts = count_prefill_flops(model_config, frames, [holitom_config(m, r) for m, r in cases])
    for row, count in zip(rows, counts):
        row["graph_tflops"] = _significant(count.llm_tflops)
        row["sequence_length"] = list(count.sequence_length)
        row["graph_parts_tflops"] = {k: _significant(v / 1e12) for k, v in count.parts.items()}
        row["graph_components_tflops"] = {k: _significant(v / 1e12) for k, v in sorted(count.components.items())}
    return rows


def _significant(value: float, digits: int = 6) -> float:
    return float(f"{value:.{digits}g}")


#: The paper's table, shown next to the figures (the tests hold their own copy).
PAPER_TFLOPS = {("vanilla", 1.0): 40.8, ("holitom_wo_inner", 0.25): 8.7, ("holitom", 0.25): 7.1,
                ("holitom_wo_inner", 0.2): 7.0, ("holitom", 0.2): 5.8, ("holitom_wo_inner", 0.15): 5.2,
                ("holitom", 0.15): 4.3, ("holitom_wo_inner", 0.1): 3.4, ("holitom", 0.1): 2.8}


def _format(rows: list[dict[str, Any]]) -> str:
    """The rows as a text table (TFLOPs; graph = decoder layers, vision and HoliTom's own nodes apart)."""
    def cell(value: Any, width: int, digits: int = 3) -> str:
        return f"{value:>{width}.{digits}f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"

    head = (f"{'method':<17}{'retain':>7}{'paper':>7}{'formula':>9}{'graph':>9}{'graph/formula':>14}"
            f"{'vision':>8}{'holitom':>9}  sequence (in, outer, inner)")
    lines = [head, "-" * len(head)]
    for row in rows:
        graph, parts = row.get("graph_tflops"), row.get("graph_parts_tflops", {})
        ratio = graph / row["formula_tflops"] if graph is not None else None
        lines.append(f"{row['method']:<17}{row['retain_ratio']:>7.2f}"
                     f"{cell(PAPER_TFLOPS.get((row['method'], row['retain_ratio'])), 7, 1)}"
                     f"{cell(row['formula_tflops'], 9)}{cell(graph, 9)}{cell(ratio, 14, 2)}"
                     f"{cell(parts.get('vision_tower'), 8, 2)}{cell(parts.get('holitom'), 9, 4)}"
                     f"  {tuple(row['sequence_length']) if 'sequence_length' in row else '-'}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m holitom_fx.flops", description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")
    parser.add_argument("--ratios", type=float, nargs="+", default=list(RATIOS),
                        help="retain ratios (default: %(default)s)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--formula-only", action="store_true", help="skip the graph count (instant)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    rows = table(args.ratios, args.methods, graph=not args.formula_only)
    print(json.dumps(rows, indent=1) if args.json else _format(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
