"""``holitom_backend``: a torch.compile backend that runs the HoliTom passes, then Inductor.

    model.compile(backend=holitom_backend)          # or holitom_fx.compile(model, config)
    out = model.generate(**inputs)

The backend never edits the model: it rewrites the FX graphs Dynamo hands it and keeps
the runtime state those graphs share (the decode position shift, the last segments).
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensor

from passes.context import KEPT_SLOTS, SALIENCY, WINDOW_END, GraphContext, GridCheck, RewriteError
from passes.dataflow import DataflowView
from passes.decode_positions import DERIVED_POSITION_SHIFT, POSITION_SHIFT, SLIDING_COUNT_SHIFT, \
    decode_position_input, is_cache_input
from passes.frame_grid import GridError
from passes.manager import PassManager
from passes.outer_merge import video_placement
from passes.specialize import ScalarProbe, is_symbolic, scalar_reads, specialize, symbol_bindings

from .archs import VideoLayout, layout_for
from .eager_calls import EagerCalls
from .encoded_grid import EncodedGrids
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

    Token counts are per row, over its ``videos`` video spans, pass-through tokens (the trailing
    newline) included: ``tokens_in = videos*(T*N + P)``, ``tokens_after_outer = videos*(round(r*T*N) + P)``.
    """

    frames: int = 0  # per video
    videos: int = 1  # video spans per row, each merged on its own
    tokens_in: int = 0
    tokens_after_outer: int = 0
    tokens_after_inner: int = 0
    inner_layer: int | None = None
    batch: int = 0
    sequence_length: tuple[int, int, int] = (0, 0, 0)  # before, after outer, after inner
    boundary: str | None = None
    saliency: str = "feature norm"  # what ranked the dynamic tokens: "vision attention..." or the fallback
    graphs: list[GraphRecord] = field(default_factory=list)
    window_end: torch.Tensor | None = field(default=None, repr=False)

    @property
    def segments(self) -> list[list[tuple[int, int]]]:
        """Per video (row-major: row b's video j at ``b*videos + j``), the inclusive frame windows of the
        last prefill (reads the device once)."""
        if self.window_end is None:
            return []
        rows = []
        for ends in self.window_end.tolist():
            starts = [0] + [e + 1 for e in sorted(set(ends))[:-1]]
            rows.append(list(zip(starts, sorted(set(ends)))))
        return rows


def _module_from_dynamo_frame() -> torch.nn.Module | None:
    """The module whose forward Dynamo is tracing (``self`` of the root frame)."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
    except Exception:  # private API: absent or moved in this torch
        return None
    module = tx.output.root_tx.f_locals.get("self") if tx is not None else None
    return module if isinstance(module, torch.nn.Module) else None


def _vision_classes(model: torch.nn.Module, layout: VideoLayout | None) -> frozenset[type]:
    """Module classes found only in the model's vision tower: they mark encoder layers in any graph."""
    if layout is None or not layout.vision_tower:
        return frozenset()
    try:
        tower = model.get_submodule(layout.vision_tower)
    except AttributeError:
        return frozenset()
    inside = {id(module) for module in tower.modules()}
    elsewhere = {type(module) for module in model.modules() if id(module) not in inside}
    return frozenset(type(module) for module in tower.modules()) - elsewhere


def _model_record(model: torch.nn.Module) -> tuple[Any, VideoLayout | None, frozenset[type]]:
    config = getattr(model, "config", None)
    layout = layout_for(config)
    return config, layout, _vision_classes(model, layout)


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
        # (config, layout, vision classes) of the model given to bind(), or else of the last one traced
        self._bound: tuple[Any, VideoLayout | None, frozenset[type]] | None = None
        self._traced: tuple[Any, VideoLayout | None, frozenset[type]] | None = None
        self._shifts: dict[str, torch.Tensor] = {}  # POSITION_SHIFT, DERIVED_POSITION_SHIFT, SLIDING_COUNT_SHIFT:
        # set by each prefill
        self._vision_saliency: torch.Tensor | None = None  # left by an encoder graph for the next prefill
        self.graphs: list[GraphRecord] = []
        self.fallbacks = 0
        self.saliency_fallbacks = 0
        # calls of the bound model that ran outside Dynamo where HoliTom had work: a video prompt (not merged),
        # a decode step after a merged prefill (not shifted); said once per model (EagerCalls)
        self.uncompiled_calls = 0
        self._said_uncompiled: set[int] = set()
        self._last_prefill_merged = False  # decoding now continues a merged prefill
        # the next position after the last prefill (L' compact, L original; None: unmerged), and whether a decode
        # step has read a sliding layer's count since (SLIDING_COUNT_SHIFT, passes/decode_positions.py)
        self._decode_start: int | None = None
        self._count_read = True
        self._eager: EagerCalls | None = None
        self._decoder_runs = 0  # calls of compiled graphs that run decoder layers
        self._compiled_decoder = False  # the graph _compile was last given runs decoder layers
        self._pending: tuple[torch.Tensor, int] | None = None  # ids embedded eagerly, decoder runs then
        self.last_report: HoliTomReport | None = None
        self._said_saliency_fallback = False
        self._said_fallbacks: set[str] = set()
        self._merged_prefill_seen = False  # a decode graph takes the compact shift inside only after one
        self._kept_slots: torch.Tensor | None = None  # the slots layers K.. kept in the last (padded) prefill
        self._encoded: EncodedGrids | None = None  # the bound model's last encoded video grid (encoded_grid.py)
        _enable_dynamo_capture()

    def bind(self, model: torch.nn.Module) -> "HoliTomBackend":
        """Take the architecture from ``model`` (otherwise from the module Dynamo traces), and keep the grid
        ``[V, 3]`` its video encoder is called with (``EncodedGrids``): a flat video span's frames."""
        self._bound = _model_record(model)
        if self._encoded is not None:
            self._encoded.remove()
        self._encoded = EncodedGrids(model)
        if self._eager is not None:
            self._eager.remove()
        model_id, name = id(model), type(model).__name__
        self._eager = EagerCalls(model, self._embedded_eagerly, lambda: self._logits_eagerly(model_id, name))
        return self

    def _embedded_eagerly(self, ids: torch.Tensor) -> None:
        self._pending = ids, self._decoder_runs

    def _logits_eagerly(self, model_id: int, name: str) -> None:
        """The call whose ids were embedded eagerly reached its output head eagerly too, with no HoliTom graph
        running decoder layers in between: Dynamo ran it uncompiled."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[1] == self._decoder_runs:
            self._uncompiled_call(pending[0], model_id, name)

    def _video_ids(self) -> tuple[int, ...]:
        """The ids marking video placeholders in the bound model's prompts: the config's, else the model's."""
        if self.config.video_token_id is not None:
            return (self.config.video_token_id,)
        config, layout, _ = self._bound or (None, None, frozenset())
        known = layout.video_token_id(config) if layout is not None and config is not None else None
        return (known,) if known is not None else ()

    def _uncompiled_call(self, ids: torch.Tensor, model_id: int, name: str) -> None:
        """The bound model ran a call on ``ids`` outside Dynamo (``EagerCalls``), none of HoliTom's graphs with
        it. A video prompt is then not merged; a decode step after a merged prefill is
        not shifted to the merged positions. Counted in ``uncompiled_calls``, said once per model."""
        video = any(bool((ids == token).any()) for token in self._video_ids())
        decode_after_merge = not video and self._last_prefill_merged and ids.shape[-1] == 1
        if not decode_after_merge:  # a prompt: decoding after it continues at its own positions
            self._unmerged_prefill_state()
        if not video and not decode_after_merge:
            return
        self.uncompiled_calls += 1
        if model_id in self._said_uncompiled:
            return
        self._said_uncompiled.add(model_id)
        what = ("a prompt with video placeholders ran uncompiled: HoliTom did not merge it" if video else
                "a decode step after a merged prefill ran uncompiled: its positions are not HoliTom's")
        fix = ("compile each model in a Dynamo region of its own: holitom_fx.compile(model, config) does, or "
               "model.compile(backend=backend, isolate_recompiles=True)" if ISOLATES_RECOMPILES else
               "raise the limit before compiling: torch._dynamo.config.recompile_limit = 64")
        log.warning("HoliTom: %s (%s; counted in backend.uncompiled_calls). Likely cause: Dynamo reached "
                    "torch._dynamo.config.recompile_limit (%d) on a code object that every transformers model "
                    "shares (the forward wrapper in transformers.utils.generic), as when several models are "
                    "compiled in one process, and runs that frame eagerly from then on (its own 'hit "
                    "config.recompile_limit' warning names it). Fix: %s. If the model is not compiled at all: "
                    "model.compile(backend=backend) (torch.compile(model) returns a wrapper whose .generate "
                    "runs the model uncompiled).", what, name, torch._dynamo.config.recompile_limit, fix)

    def _unmerged_prefill_state(self) -> None:
        """A prompt ran unmerged: decoding after it continues at its own positions, with every cache slot."""
        for shift in self._shifts.values():
            shift.zero_()
        self._vision_saliency = None  # an image's, or unused: never for a later prefill
        self._kept_slots = None
        self._last_prefill_merged = False
        self._decode_start, self._count_read = None, False
        self._take_encoded_grid()

    def _encoded_grid(self) -> torch.Tensor | None:
        return self._encoded.last if self._encoded is not None else None

    def _take_encoded_grid(self) -> None:
        if self._encoded is not None:
            self._encoded.take()

    def __call__(self, gm: fx.GraphModule, example_inputs: list) -> Callable:
        runner = self._compile(gm, example_inputs)
        if not self._compiled_decoder:
            return runner

        def run(*args):  # a graph running decoder layers ran: this call is not one Dynamo ran eagerly
            self._decoder_runs += 1
            return runner(*args)

        return run

    def _context(self) -> GraphContext:
        """The graph's context. Unbound, the architecture is the traced module's; a frame Dynamo resumed
        inside a model after a graph break (no record of its own) keeps the last model's."""
        model = self._bound
        if model is None:
            module = _module_from_dynamo_frame()
            if module is not None and (self._traced is None or layout_for(getattr(module, "config", None))):
                self._traced = _model_record(module)  # a model with no config is read off its graphs alone
            model = self._traced
        config, layout, classes = model or (None, None, frozenset())
        return GraphContext(self.config, layout, config, vision_classes=classes,
                            merged_prefill_seen=self._merged_prefill_seen, kept_slots=self._kept_slots,
                            encoded_grid=self._encoded_grid())

    def _compile(self, gm: fx.GraphModule, example_inputs: list) -> Callable:
        ctx = self._context()
        ctx.graph_break = _graph_break_reason(gm)
        view = DataflowView(gm.graph, ctx.vision_classes)  # the backend's questions about the graph as traced
        self._compiled_decoder = bool(view.layers.decoder)
        placement = self._placement(view, ctx)
        if placement is not None and (is_symbolic(gm) or (placement == "cat" and scalar_reads(gm))):
            return self._specializing(gm, split_point=placement == "cat")
        rewritten = fx.GraphModule(gm, _copy_graph(gm.graph))
        record = GraphRecord(nodes=len(gm.graph.nodes), rewrites={}, boundary=None, notes=ctx.notes)
        try:
            record.rewrites = PassManager(ctx)(rewritten, example_inputs)
        except Exception as err:  # noqa: BLE001 - never break the user's model: compile it unchanged, say why
            if not isinstance(err, RewriteError):
                err = RewriteError(f"internal error in a HoliTom pass: {type(err).__name__}: {err}")
            said = str(err) in self._said_fallbacks  # once per reason; every one is counted and recorded
            log.log(logging.DEBUG if said else logging.WARNING, "HoliTom left a graph unchanged: %s (what HoliTom "
                    "applies to, and why not elsewhere: %s)", err, SUPPORT_TABLE)
            self._said_fallbacks.add(str(err))
            self.fallbacks += 1
            record.fallback = str(err)
            ctx = GraphContext(self.config, None, None)
            rewritten = gm
        self.graphs.append(record)
        if ctx.video is not None:
            record.boundary = ctx.video.scatter.format_node()
        elif not ctx.extra_inputs and not ctx.exported_saliency:  # said once per call: at its language-model graph
            log.log(logging.INFO if _is_prefill(view) or placement is not None else logging.DEBUG,
                    "HoliTom did nothing on a graph of %d nodes: %s", record.nodes, "; ".join(ctx.notes) or "-")
        device = next((x.device for x in example_inputs if isinstance(x, torch.Tensor)), torch.device("cpu"))
        placeholders = _static_examples(gm, [ctx.runtime_input(name).to(device) for name in ctx.extra_inputs])
        compiled = self._compiler(rewritten, list(example_inputs) + placeholders)
        runner = self._runtime(compiled, ctx, device, _is_prefill(view))
        position_at = decode_position_input(gm.graph)
        if ctx.video is None and POSITION_SHIFT not in ctx.extra_inputs and position_at is not None \
                and ctx.positions == "compact":
            runner = self._shifted_after_merge(runner, position_at, device)
        if KEPT_SLOTS in ctx.extra_inputs:
            return self._slots_guarded(gm, runner, tuple(ctx.kept_slots.shape))
        check = ctx.video.grid_check if ctx.video is not None else None
        return runner if check is None else self._grid_guarded(gm, runner, check)

    def _placement(self, view: DataflowView, ctx: GraphContext) -> str | None:
        """``video_placement`` of the graph; a recognizer that fails on an unusual graph means none (said)."""
        try:
            return video_placement(view, ctx)
        except Exception as err:  # noqa: BLE001 - never break the user's model over a question about it
            log.warning("HoliTom could not look for a video placement in a graph: %s: %s", type(err).__name__, err)
            self.fallbacks += 1
            return None

    def _shifted_after_merge(self, runner: Callable, position_at: int, device: torch.device) -> Callable:
        """A decode graph compiled before any merged prefill (a text-only call came first): after one, its
        position input is shifted outside the graph, as ``DecodePositionPass`` does inside later ones."""
        shift = self._shift_tensor(POSITION_SHIFT, device)

        def run(*args):
            if not self._merged_prefill_seen:
                return runner(*args)
            args = list(args)
            args[position_at] = args[position_at] - shift
            return runner(*args)

        return run

    def _grid_guarded(self, gm: fx.GraphModule, runner: Callable, check: GridCheck) -> Callable:
        """A prefill merged on a frame grid read from the prompt (M-RoPE positions, frame spans): re-read the grid
        at each call (one host read of the ids and positions per prefill, none per decode step); a video
        of another grid with the same token count gets a graph rewritten for it."""
        names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        ids_at = names.index(check.input_ids)
        positions_at = names.index(check.positions) if check.positions is not None else None
        variants = {check.grid: runner}

        def run(*args):
            try:
                grid = check.read(args[ids_at], args[positions_at] if positions_at is not None else None,
                                  self._encoded_grid())
            except GridError:
                grid = None
            if grid not in variants:
                log.info("HoliTom: video grid %s (videos, frames, tokens per frame) is new for this prompt shape; "
                         "rewriting the graph for it", grid)
                variants[grid] = self._compile(gm, list(args))
            return variants[grid](*args)

        return run

    def _slots_guarded(self, gm: fx.GraphModule, runner: Callable, shape: tuple[int, ...]) -> Callable:
        """A decode graph masking a padded prefill's dropped slots, compiled for slots of ``shape``: a later
        prefill that kept another number of slots gets a variant compiled for its own."""
        variants = {shape: runner}

        def run(*args):
            slots = self._kept_slots
            key = tuple(slots.shape) if slots is not None and slots.shape[0] == shape[0] else shape
            if key not in variants:
                variants[key] = self._compile(gm, list(args))
            return variants[key](*args)

        return run

    def _slots_for(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The last padded prefill's kept slots, or all visible (an unmerged or batch-1 prefill came last)."""
        slots = self._kept_slots
        if slots is not None and tuple(slots.shape) == shape:
            return slots
        return torch.ones(shape, dtype=torch.bool, device=device)

    def _specializing(self, gm: fx.GraphModule, split_point: bool) -> Callable:
        """A prefill traced with a symbolic length, or spliced at a split point read with ``.item()``
        (``split_point``): rewrite and compile one static copy per length and split value.

        Done at the first call of each, outside Dynamo's tracing, from the real arguments.
        """
        variants: dict[tuple, Callable] = {}
        probe = ScalarProbe(gm) if split_point else None

        def compile_variant(args: list) -> Callable:
            try:
                static, kept = specialize(gm, args, bind_reads=split_point)
            except RewriteError as err:
                log.warning("HoliTom runs a dynamic-shape graph uncompiled: %s", err)
                self.fallbacks += 1
                return gm.forward
            compiled = self._compile(static, [args[i] for i in kept])
            return lambda *call_args: compiled(*[call_args[i] for i in kept])

        def run(*args):
            key = tuple(sorted((str(symbol), value) for symbol, value in symbol_bindings(gm, args).items()))
            if probe is not None:  # and the values the model reads with .item() (a split point)
                key += tuple(("read", value) for value in probe(list(args)))
            if key not in variants:
                log.info("HoliTom: specializing a data-dependent prefill graph for %s", dict(key))
                variants[key] = compile_variant(list(args))
            return variants[key](*args)

        return run

    def _shift_tensor(self, name: str, device: torch.device) -> torch.Tensor:
        if name not in self._shifts:
            self._shifts[name] = torch.zeros((), dtype=torch.long, device=device)
        return self._shifts[name]

    def _take_vision_saliency(self, expected: tuple[int, int], layout: VideoLayout | None) -> torch.Tensor | None:
        """The saliency an encoder graph left for this prefill, if it fits; consumed either way."""
        saliency, self._vision_saliency = self._vision_saliency, None
        if saliency is not None and tuple(saliency.shape) == expected:
            return saliency
        self.saliency_fallbacks += 1
        if not self._said_saliency_fallback:
            why = ("holitom_fx.compile(model) compiles the vision tower too" if layout is not None and
                   layout.vision_tower else "this model's layout record reads no encoder attention (README)")
            log.info("HoliTom: the vision encoder's attention did not reach this prefill (the video was encoded "
                     "outside the compiled graphs, e.g. by generate()); ranking dynamic tokens by the feature-norm "
                     "saliency fallback (holitom_fx.ops.feature_saliency): %s.", why)
            self._said_saliency_fallback = True
        return None

    def _runtime(self, compiled: Callable, ctx: GraphContext, device: torch.device, prefill: bool) -> Callable:
        """Wrap a compiled graph with the runtime state it shares with the others."""
        if ctx.exported_saliency:  # a vision-tower graph: keep its saliency, return what the model expects

            def vision(*args):
                *outputs, self._vision_saliency = compiled(*args)
                return outputs

            return vision
        video, inner = ctx.video, ctx.inner
        if video is None and ctx.extra_inputs:  # a decode graph: reads the last prefill's shift and kept slots
            slots_shape = tuple(ctx.kept_slots.shape) if KEPT_SLOTS in ctx.extra_inputs else None
            count_at = ctx.sliding_count

            def decode(*args):
                if count_at is not None and not self._count_read:  # the first step after a prefill: its count
                    start = self._decode_start
                    self._shift_tensor(SLIDING_COUNT_SHIFT, device).fill_(0 if start is None else
                                                                          start - int(args[count_at]))
                    self._count_read = True
                return compiled(*args, *(self._slots_for(slots_shape, device) if name == KEPT_SLOTS
                                         else self._shift_tensor(name, device) for name in ctx.extra_inputs))

            return decode
        if video is None:
            if not prefill:
                return compiled
            for name in (POSITION_SHIFT, DERIVED_POSITION_SHIFT, SLIDING_COUNT_SHIFT):
                self._shift_tensor(name, device)

            def unmerged_prefill(*args):  # decoding after it continues at its own positions
                self._unmerged_prefill_state()
                return compiled(*args)

            return unmerged_prefill
        # generate() numbers decode steps after L: compact positions subtract L - L'. A model deriving its
        # positions from its cache length (L') adds L - L' for original positions.
        removed = video.length - video.new_length
        shift_values = {self._shift_tensor(POSITION_SHIFT, device): removed if ctx.positions == "compact" else 0,
                        self._shift_tensor(DERIVED_POSITION_SHIFT, device): removed if ctx.positions == "original"
                        else 0}
        window_end = ctx.runtime_input(WINDOW_END).to(device)
        expected_saliency = (video.batch * video.videos * video.frames, video.tokens_per_frame)
        no_saliency = ctx.runtime_input(SALIENCY).to(device), torch.zeros((), dtype=torch.bool, device=device)
        valid = torch.ones((), dtype=torch.bool, device=device)

        def runtime_inputs() -> tuple[list[torch.Tensor], str]:
            values, source = [], "vision attention"
            for name in ctx.extra_inputs:
                if name == WINDOW_END:
                    values.append(window_end)
                elif name == SALIENCY:
                    saliency = self._take_vision_saliency(expected_saliency, ctx.layout)
                    values += [no_saliency[0], no_saliency[1]] if saliency is None else [saliency, valid]
                    source = "feature norm" if saliency is None else "vision attention (encoder graph)"
            return values, source

        def prefill(*args):
            extra, source = runtime_inputs()
            out = compiled(*args, *extra)
            self._take_encoded_grid()
            self._kept_slots = None
            if inner is not None and inner.exports_kept_slots:  # a padded batch: full-length caches in layers K..
                *out, self._kept_slots = out
            for shift, value in shift_values.items():
                shift.fill_(value)
            self._merged_prefill_seen = True
            self._last_prefill_merged = True
            self._decode_start = video.new_length if ctx.positions == "compact" else video.length
            self._count_read = False
            self.last_report = report = HoliTomReport(
                frames=video.frames, videos=video.videos,
                tokens_in=video.videos * (video.tokens_in + video.pass_through),
                tokens_after_outer=video.videos * video.merged_tokens,
                tokens_after_inner=video.videos * (inner.visual_tokens if inner else video.merged_tokens),
                inner_layer=inner.layer if inner else None, batch=video.batch,
                sequence_length=(video.length, video.new_length, inner.new_length if inner else video.new_length),
                boundary=video.scatter.format_node(), saliency=source, graphs=self.graphs, window_end=window_end)
            log.info("HoliTom prefill: %d frames, visual tokens %d -> %d (outer) -> %d (inner, layer %s), "
                     "sequence %d -> %d, saliency: %s", report.frames, report.tokens_in, report.tokens_after_outer,
                     report.tokens_after_inner, report.inner_layer, report.sequence_length[0],
                     report.sequence_length[2], source)
            return out

        return prefill


def _static_examples(gm: fx.GraphModule, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """The examples of HoliTom's runtime inputs as static fakes of Dynamo's fake mode: a real tensor would be
    given sizes of its own symbols there, with no source a guard could read them from."""
    fake = next((value for node in gm.graph.find_nodes(op="placeholder")
                 if isinstance(value := node.meta.get("example_value"), FakeTensor)), None)
    if fake is None or fake.fake_mode.shape_env is None:
        return tensors
    return [fake.fake_mode.from_tensor(t, static_shapes=True) for t in tensors]


def _graph_break_reason(gm: fx.GraphModule) -> str | None:
    """Dynamo's reason for ending ``gm`` at a graph break (``compile_subgraph_reason``, set on the graph it hands a
    backend; private, so absent means unknown): its first line and the user line it broke at; None otherwise."""
    reason = getattr(gm, "compile_subgraph_reason", None)
    if reason is None or not getattr(reason, "graph_break", False):
        return None
    lines = [line.strip() for line in str(getattr(reason, "reason", "")).splitlines() if line.strip()]
    text = lines[0] if lines else "unknown reason"
    stack = getattr(reason, "user_stack", None) or []
    if stack:
        frame = stack[-1]
        text += f" at {frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} `{(frame.line or '').strip()}`"
    return text


def _is_prefill(view: DataflowView) -> bool:
    """A graph that runs decoder layers on a fresh prompt (no cache input, more than one new token per row)."""
    return bool(view.layers.decoder) and not any(is_cache_input(n) for n in view.graph.nodes) and \
        not view.one_new_token


#: Dynamo settings without which a video LLM's prompt graph splits before the merge can see it:
#: transformers' placeholder check reads a count with ``.item()``; Qwen3-VL's deepstack indexes with
#: a boolean mask (a data-dependent output shape).
DYNAMO_CAPTURE = {"capture_scalar_outputs": True, "capture_dynamic_output_shape_ops": True}


def _enable_dynamo_capture() -> None:
    """Set ``DYNAMO_CAPTURE`` when a backend is created, before Dynamo traces with it; said once."""
    changed = {name: value for name, value in DYNAMO_CAPTURE.items() if getattr(torch._dynamo.config, name) != value}
    for name, value in changed.items():
        setattr(torch._dynamo.config, name, value)
    if changed:
        log.info("HoliTom set %s so that the video's placement and the decoder trace into one graph",
                 ", ".join(f"torch._dynamo.config.{name}={value}" for name, value in changed.items()))


def _copy_graph(graph: fx.Graph) -> fx.Graph:
    copied, copies = fx.Graph(), {}
    copied.output(copied.graph_copy(graph, copies))
    for node in copied.nodes:  # node references in metadata follow the copy
        if "holitom_scalar_sources" in node.meta:
            node.meta["holitom_scalar_sources"] = {copies[n] for n in node.meta["holitom_scalar_sources"] if n in copies}
    return copied


#: The default backend. Created when this module is imported (``backend="holitom"`` imports it), so Dynamo's
#: process-wide capture settings (``DYNAMO_CAPTURE``) are set from then on.
holitom_backend = HoliTomBackend()
# backend="holitom": registered through the `torch_dynamo_backends` entry point (pyproject.toml).


#: Where users read what HoliTom applies to (said with every refusal).
SUPPORT_TABLE = "docs/support.md in the holitom-fx repository"
_VISUAL_INPUT_WORDS = ("video", "pixel", "frame", "image", "visual")


def compile(model: torch.nn.Module, config: HoliTomConfig | None = None, **compile_kwargs) -> HoliTomBackend:
    """Compile ``model`` and its vision tower in place with one HoliTom backend bound to it; returns it.

    ``generate()`` encodes the video outside ``forward`` (TRACING_NOTES), so the vision tower
    (the layout record's ``vision_tower`` submodule) is compiled too: its graph computes the
    saliency from the encoder's own q/k and hands it to the merged prefill; then ``module.compile``
    (``compile_kwargs`` go there). Dynamo's capture settings are set by the backend (``DYNAMO_CAPTURE``).
    """
    backend = HoliTomBackend(config).bind(model)
    inputs = inspect.signature(model.forward).parameters
    variadic = any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in inputs.values())
    if not variadic and not any(word in name for name in inputs for word in _VISUAL_INPUT_WORDS):
        log.warning("HoliTom: %s.forward takes no video or pixel input (%s): unless visual features reach its "
                    "graphs under another name, HoliTom will pass them through unchanged (%s)",
                    type(model).__name__, ", ".join(inputs) or "no parameters", SUPPORT_TABLE)
    compile_kwargs = _isolated(compile_kwargs)
    layout = layout_for(getattr(model, "config", None))
    if layout is not None and layout.vision_tower:
        model.get_submodule(layout.vision_tower).compile(backend=backend, **compile_kwargs)
    else:
        log.info("HoliTom: no layout record names the vision tower of model type %r: it is not compiled apart "
                 "(a forward call that encodes in its own graph still gets the attention saliency)",
                 getattr(getattr(model, "config", None), "model_type", None))
    model.compile(backend=backend, **compile_kwargs)
    return backend


#: ``torch.compile(..., isolate_recompiles=True)`` (torch >= 2.13): the compiled call keeps its Dynamo cache
#: entries in a region of its own, so other models compiled in the process do not count against its
#: ``recompile_limit``.
ISOLATES_RECOMPILES = "isolate_recompiles" in inspect.signature(torch.compile).parameters


def _isolated(compile_kwargs: dict) -> dict:
    """``compile_kwargs`` with ``isolate_recompiles=True`` where torch has it and the caller did not choose.

    transformers' models share code objects (the forward wrapper of ``transformers.utils.generic``, the output
    capturing hooks): Dynamo keeps one cache per code object and, by default, one ``recompile_limit`` (8)
    over all the models compiled in a process. A model compiled after a few others then runs those frames
    eagerly, where HoliTom never sees its graphs. Isolating each model's compiled call changes no global
    Dynamo setting."""
    if ISOLATES_RECOMPILES and "isolate_recompiles" not in compile_kwargs:
        return {**compile_kwargs, "isolate_recompiles": True}
    return compile_kwargs
