"""State the passes share for one graph: settings in, findings out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.fx.experimental.symbolic_shapes import ShapeEnv

from holitom_fx.archs import GENERIC, VideoLayout
from holitom_fx.config import HoliTomConfig

from .frame_grid import GridError, encoded_frame_grid, rope_frame_grid, span_frame_grid


#: Runtime input a merged prefill graph writes its segments into (a backend-owned buffer).
WINDOW_END = "holitom_window_end"
#: Runtime inputs of a prefill graph whose saliency comes from the separately compiled vision
#: tower: the pooled saliency ``[B*T, N]`` and whether it is valid for this call (else feature norm).
SALIENCY = "holitom_saliency"
SALIENCY_VALID = "holitom_saliency_valid"
KEPT_SLOTS = "holitom_kept_slots"  # decode graphs of a padded batch: the slots layers K.. kept ([B, L'] bool)

SDPA_TARGETS = (torch._C._nn.scaled_dot_product_attention, torch.nn.functional.scaled_dot_product_attention)


class RewriteError(Exception):
    """The graph cannot be rewritten safely; the backend compiles it unchanged and says why."""


@dataclass(frozen=True)
class GridCheck:
    """What a merged prefill's frame grid was read from: the placeholder names of the input ids and of the
    M-RoPE position ids (None: the grid is the ids' frame spans), and the grid ``(videos, frames, tokens
    per frame)`` found there."""

    input_ids: str
    positions: str | None
    token_id: int
    grid: tuple[int, int, int]
    # the grid came from the one the video encoder was last called with (``encoded_frame_grid``), with the
    # encoder's spatial merge (m, m) (None: span / t tokens per frame)
    encoded: bool = False
    merge: tuple[int, int] | None = None

    def read(self, input_ids: torch.Tensor, positions: torch.Tensor | None,
             encoded: torch.Tensor | None = None) -> tuple[int, int, int]:
        """The grid of a call's inputs, the way this one was read (``GridError`` when there is none)."""
        if self.encoded:
            if encoded is None:
                raise GridError("no video was encoded since the last prefill")
            return encoded_frame_grid(input_ids, self.token_id, encoded, self.merge)
        return span_frame_grid(input_ids, self.token_id) if self.positions is None else rope_frame_grid(
            input_ids, positions, self.token_id)


@dataclass
class VideoSite:
    """The vision-token boundary found by the outer pass, and what the merge made of it."""

    scatter: fx.Node
    batch: int
    length: int  # sequence length before merging
    frames: int
    tokens_per_frame: int
    pass_through: int
    merged_tokens: int  # M + pass-through: tokens of one video after the outer stage
    new_length: int  # sequence length after the outer stage
    source: fx.Node  # original index each token stands for, [B, L']
    span_start: fx.Node  # [B, videos], where each merged video starts
    window_end: fx.Node  # [B*videos, T], the segments
    last_inserted: fx.Node
    videos: int = 1  # video spans per row, each merged on its own
    grid_check: GridCheck | None = None  # the grid came from the prompt's positions: re-checked per call
    frame_spans: bool = False  # the video's frames are spans of their own: its merged tokens are not one span

    @property
    def tokens_in(self) -> int:
        """Frame-grid tokens of one video."""
        return self.frames * self.tokens_per_frame


@dataclass(frozen=True)
class SaliencyCandidate:
    """Saliency computed after one encoder SDPA call: ``[frames, tokens]``, pooled to the frame grid,
    or raw (per patch) when no record says how patches pool; the outer pass pools it then."""

    anchor: fx.Node  # the encoder SDPA call it reads
    layer: int  # the encoder layer of that call
    frames: int
    tokens: int
    pooled: bool


@dataclass
class InnerSite:
    layer: int
    visual_tokens: int  # after the inner stage
    new_length: int
    outputs: list[fx.Node]  # the merged hidden state and every tensor gathered for layers >= K
    exports_kept_slots: bool = False  # a padded batch: full-length caches, the kept slots a last extra output


@dataclass
class GraphContext:
    config: HoliTomConfig
    layout: VideoLayout | None
    model_config: Any | None
    video: VideoSite | None = None
    inner: InnerSite | None = None
    vision_classes: frozenset[type] = frozenset()  # module classes of the model's vision tower
    saliency_candidates: dict[fx.Node, SaliencyCandidate] = field(default_factory=dict)
    exported_saliency: bool = False  # the graph returns its saliency as an extra, last output
    extra_inputs: list[str] = field(default_factory=list)  # runtime inputs the backend appends
    notes: list[str] = field(default_factory=list)  # why a pass did nothing
    example_values: dict[str, torch.Tensor] = field(default_factory=dict)  # placeholder -> real example input
    view: Any = None  # the graph's ``passes.dataflow.DataflowView``, refreshed by the manager before each pass
    derived_positions: bool = False  # positions derived in the graph were given their original values
    merged_prefill_seen: bool = False  # this backend merged a prefill: decode graphs take the compact shift inside
    kept_slots: torch.Tensor | None = None  # the slots the last padded prefill kept in layers K.. ([B, L'] bool)
    encoded_grid: torch.Tensor | None = None  # [V, 3] (t, h, w) the video encoder was last called with, if kept
    graph_break: str | None = None  # why Dynamo ended this graph at a graph break (its reason, where); None: at a return
    sliding_count: int | None = None  # a decode graph's positions count from this input (a sliding layer's count)

    def __post_init__(self) -> None:
        if self.layout is None:  # no record: everything is read off the graph
            self.layout = GENERIC

    @property
    def positions(self) -> str:
        """The position scheme in force: M-RoPE models always keep representative positions (the spec)."""
        rope = self.layout.rotary_axes == 3 or (
            self.video is not None and self.video.grid_check is not None and self.video.grid_check.positions)
        return "original" if rope else self.config.positions

    def runtime_input(self, name: str) -> torch.Tensor:
        """A placeholder-shaped value for an extra runtime input (the backend supplies the real one)."""
        if name == WINDOW_END:
            return torch.zeros(self.video.batch * self.video.videos, self.video.frames, dtype=torch.long)
        if name == SALIENCY:
            return torch.zeros(self.video.batch * self.video.videos * self.video.frames, self.video.tokens_per_frame)
        if name == SALIENCY_VALID:
            return torch.zeros((), dtype=torch.bool)
        if name == KEPT_SLOTS:
            return self.kept_slots
        return torch.zeros((), dtype=torch.long)


def fresh_fake_mode() -> FakeTensorMode:
    """A fake mode of its own for real example inputs: static sizes, data-dependent values allowed
    (a shape environment turns a model's own ``.item()`` checks into unbacked symbols)."""
    return FakeTensorMode(allow_non_fake_inputs=True, shape_env=ShapeEnv())


def propagate_fresh(gm: fx.GraphModule, inputs: list) -> None:
    """Fill ``meta["val"]`` of ``gm`` for real ``inputs``, outside Dynamo (a specialization, a new grid).

    FakeTensorProp in a fake mode of its own first; the unbacked symbols Dynamo bound (``.item()``
    results) belong to Dynamo's shape environment, so they are forgotten and rebound there. Where a
    data-dependent op still has no fake answer (a boolean-mask index inside a model's own check), the
    graph is run once on the real inputs instead and each value kept as a fake of the same shape.
    """
    from torch.fx.passes.fake_tensor_prop import FakeTensorProp

    for node in gm.graph.nodes:
        node.meta.pop("unbacked_bindings", None)
    try:
        mode = fresh_fake_mode()
        fakes = [mode.from_tensor(x, static_shapes=True) if isinstance(x, torch.Tensor) else x for x in inputs]
        FakeTensorProp(gm, mode).propagate_dont_convert_inputs(*fakes)
    except Exception:  # noqa: BLE001 - retried with real values below
        run_on_real_inputs(gm, inputs, record=fresh_fake_mode())


def run_on_real_inputs(gm: fx.GraphModule, inputs: list, record: FakeTensorMode | None = None) -> None:
    """Run ``gm`` once on real ``inputs`` (tensor inputs other than weights copied: none is mutated), no
    grad; with ``record``, keep a fake of each value in ``meta["val"]``. Raises what the graph raises."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    copies = [x.clone() if isinstance(x, torch.Tensor) and not is_weight(node) else x
              for node, x in zip(placeholders, inputs)]
    with torch.no_grad():
        _RecordingInterpreter(gm, record).run(*copies)


class _RecordingInterpreter(fx.Interpreter):
    """Runs a graph on real tensors, keeping a fake of each value when given a mode (values are freed as usual)."""

    def __init__(self, gm: fx.GraphModule, mode: FakeTensorMode | None):
        super().__init__(gm)
        self.mode = mode

    def run_node(self, node: fx.Node):
        result = super().run_node(node)
        if self.mode is not None:
            node.meta["val"] = fx.node.map_aggregate(
                result, lambda v: self.mode.from_tensor(v, static_shapes=True) if isinstance(v, torch.Tensor) else v)
        return result


def tensor_of(node: Any) -> torch.Tensor | None:
    """The (fake) tensor a node produces, from Dynamo's or FakeTensorProp's metadata."""
    if not isinstance(node, fx.Node):
        return None
    value = node.meta.get("val", node.meta.get("example_value"))
    return value if isinstance(value, torch.Tensor) else None


def shape_of(node: Any) -> tuple[int, ...] | None:
    """The node's static shape; None when unknown or when a size depends on data (an unbacked symbol)."""
    value = tensor_of(node)
    if value is None or not all(isinstance(size, int) for size in value.shape):
        return None
    return tuple(value.shape)


def sdpa_arguments(node: fx.Node) -> dict:
    """An SDPA call's arguments by name, positional or keyword."""
    names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")
    return dict(zip(names, node.args)) | dict(node.kwargs)


def sdpa_inputs(node: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node | None, float | None]:
    """(query, key, attn_mask, scale) of an SDPA call, positional or keyword."""
    bound = sdpa_arguments(node)
    return bound["query"], bound["key"], bound.get("attn_mask"), bound.get("scale")


def is_weight(node: fx.Node) -> bool:
    """A lifted parameter or buffer (or a module attribute): a size equal to L there is a model
    dimension, not the sequence."""
    return node.op == "get_attr" or (node.op == "placeholder" and (
        isinstance(node.meta.get("example_value"), torch.nn.Parameter) or "_buffers_" in node.name))


def mark_inserted(node: fx.Node) -> fx.Node:
    node.meta["holitom"] = True
    return node
