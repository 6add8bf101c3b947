"""``holitom_backend``: a torch.compile backend that runs the HoliTom passes, then Inductor.

    model.compile(backend=holitom_backend)          # or holitom_fx.compile(model, config)
    out = model.generate(**inputs)

The backend never edits the model: it rewrites the FX graphs Dynamo hands it and keeps
the runtime state those graphs share (the decode position shift, the last segments).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx

from passes.context import GraphContext, RewriteError
from passes.decode_positions import POSITION_SHIFT
from passes.manager import PassManager

from .archs import layout_for
from .config import HoliTomConfig

log = logging.getLogger("holitom_fx")


@dataclass
class GraphRecord:
    """What the backend did with one graph Dynamo handed it."""

    nodes: int
    rewrites: dict[str, int]
    boundary: str | None
    notes: list[str]
    fallback: str | None = None


@dataclass
class HoliTomReport:
    """The last merged prefill: visual token counts per stage, the segments, the graphs seen.

    Token counts are per video span, pass-through tokens (the trailing newline) included:
    ``tokens_in = T*N + P``, ``tokens_after_outer = round(r*T*N) + P``.
    """

    frames: int = 0
    tokens_in: int = 0
    tokens_after_outer: int = 0
    tokens_after_inner: int = 0
    inner_layer: int | None = None
    batch: int = 0
    sequence_length: tuple[int, int, int] = (0, 0, 0)  # before, after outer, after inner
    boundary: str | None = None
    graphs: list[GraphRecord] = field(default_factory=list)
    window_end: torch.Tensor | None = field(default=None, repr=False)

    @property
    def segments(self) -> list[list[tuple[int, int]]]:
        """Per batch row, the inclusive frame windows of the last prefill (reads the device once)."""
        if self.window_end is None:
            return []
        rows = []
        for ends in self.window_end.tolist():
            starts = [0] + [e + 1 for e in sorted(set(ends))[:-1]]
            rows.append(list(zip(starts, sorted(set(ends)))))
        return rows


def _model_config_from_dynamo_frame() -> Any | None:
    """The config of the module whose forward Dynamo is tracing (``self`` of the root frame)."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
    except Exception:  # private API: absent or moved in this torch
        return None
    module = tx.output.root_tx.f_locals.get("self") if tx is not None else None
    return getattr(module, "config", None)


def _inductor(gm: fx.GraphModule, example_inputs: list) -> Callable:
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs)


class HoliTomBackend:
    """A torch.compile backend inserting HoliTom into video LLM graphs.

    Args:
        config: the HoliTom settings (default ``HoliTomConfig()``).
        compiler: what compiles the rewritten graph (default Inductor); tests pass
            ``"eager"`` to run the rewritten FX graph as is.
    """

    def __init__(self, config: HoliTomConfig | None = None, compiler: str | Callable = "inductor"):
        self.config = config or HoliTomConfig()
        self._compiler = _inductor if compiler == "inductor" else (lambda gm, _: gm.forward) if compiler == "eager" \
            else compiler
        self._model_config: Any | None = None
        self._position_shift: torch.Tensor | None = None
        self.graphs: list[GraphRecord] = []
        self.fallbacks = 0
        self.last_report: HoliTomReport | None = None
        self._said_saliency_fallback = False

    def bind(self, model: torch.nn.Module) -> "HoliTomBackend":
        """Use ``model.config`` for the architecture lookup (instead of Dynamo's frame)."""
        self._model_config = model.config
        return self

    def __call__(self, gm: fx.GraphModule, example_inputs: list) -> Callable:
        model_config = self._model_config or _model_config_from_dynamo_frame()
        ctx = GraphContext(self.config, layout_for(model_config) if model_config is not None else None, model_config)
        rewritten = fx.GraphModule(gm, _copy_graph(gm.graph))
        record = GraphRecord(nodes=len(gm.graph.nodes), rewrites={}, boundary=None, notes=ctx.notes)
        try:
            record.rewrites = PassManager(ctx)(rewritten, example_inputs)
        except RewriteError as err:
            log.warning("HoliTom left a graph unchanged: %s", err)
            self.fallbacks += 1
            record.fallback = str(err)
            ctx = GraphContext(self.config, None, None)
            rewritten = gm
        self.graphs.append(record)
        if ctx.video is not None and not self._said_saliency_fallback:
            log.info("HoliTom: the vision encoder's attention is not in this graph; ranking dynamic tokens by "
                     "the feature-norm saliency fallback (holitom_fx.ops.stages.feature_saliency)")
            self._said_saliency_fallback = True
        if ctx.video is not None:
            record.boundary = f"{ctx.video.scatter.format_node()}"
        elif not ctx.extra_inputs:
            log.info("HoliTom did nothing on a graph of %d nodes: %s", record.nodes, "; ".join(ctx.notes) or "-")
        runtime = self._runtime_inputs(ctx, example_inputs)
        compiled = self._compiler(rewritten, list(example_inputs) + runtime)
        fresh = not any("past_key_values" in n.target for n in gm.graph.nodes if n.op == "placeholder")
        return self._runtime(compiled, ctx, example_inputs, runtime, fresh)

    def _runtime_inputs(self, ctx: GraphContext, example_inputs: list) -> list[torch.Tensor]:
        """The backend-owned tensors appended to a rewritten graph's inputs, in placeholder order."""
        values = []
        for name in ctx.extra_inputs:
            if name == POSITION_SHIFT:
                values.append(self._shift_tensor(example_inputs))
            else:  # the segments buffer of a merged prefill
                device = self._shift_tensor(example_inputs).device
                values.append(ctx.runtime_input(name).to(device))
        return values

    def _shift_tensor(self, example_inputs: list) -> torch.Tensor:
        if self._position_shift is None:
            device = next((x.device for x in example_inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
            self._position_shift = torch.zeros((), dtype=torch.long, device=device)
        return self._position_shift

    def _runtime(self, compiled: Callable, ctx: GraphContext, example_inputs: list, runtime: list,
                 fresh: bool) -> Callable:
        """Wrap a compiled graph with the runtime state it shares with the others."""
        video, inner = ctx.video, ctx.inner
        if video is None and runtime:  # a decode graph: reads the shift the last prefill left
            return lambda *args: compiled(*args, *runtime)
        if video is None:
            if not fresh:
                return compiled
            shift = self._shift_tensor(example_inputs)

            def unmerged_prefill(*args):  # decoding after it continues at its own positions
                shift.zero_()
                return compiled(*args)

            return unmerged_prefill
        shift_value = video.length - video.new_length if self.config.positions == "compact" else 0
        span = video.tokens_in + video.pass_through
        report = HoliTomReport(
            frames=video.frames, tokens_in=span, tokens_after_outer=video.merged_tokens,
            tokens_after_inner=inner.visual_tokens if inner else video.merged_tokens,
            inner_layer=inner.layer if inner else None, batch=video.batch,
            sequence_length=(video.length, video.new_length, inner.new_length if inner else video.new_length),
            boundary=self.graphs[-1].boundary, graphs=self.graphs, window_end=runtime[0])
        shift = self._shift_tensor(example_inputs)

        def prefill(*args):
            out = compiled(*args, *runtime)
            shift.fill_(shift_value)
            self.last_report = report
            log.info("HoliTom prefill: %d frames, visual tokens %d -> %d (outer) -> %d (inner, layer %s), "
                     "sequence %d -> %d", report.frames, report.tokens_in, report.tokens_after_outer,
                     report.tokens_after_inner, report.inner_layer, report.sequence_length[0],
                     report.sequence_length[2])
            return out

        return prefill


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    copied = fx.Graph()
    output = copied.graph_copy(graph, {})
    copied.output(output)
    return copied


holitom_backend = HoliTomBackend()
torch._dynamo.register_backend(lambda gm, inputs: holitom_backend(gm, inputs), name="holitom")


def compile(model: torch.nn.Module, config: HoliTomConfig | None = None, **compile_kwargs) -> HoliTomBackend:
    """Compile ``model`` in place with a HoliTom backend bound to it; returns the backend.

    Sets ``torch._dynamo.config.capture_scalar_outputs`` so transformers' placeholder check
    (``.item()``) does not split the forward (see TRACING_NOTES), then ``model.compile``.
    """
    torch._dynamo.config.capture_scalar_outputs = True
    backend = HoliTomBackend(config).bind(model)
    model.compile(backend=backend, **compile_kwargs)
    return backend
