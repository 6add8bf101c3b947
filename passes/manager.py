"""The pass order, fixed in one place, ending with dead-code removal and ``graph.lint()``."""

from __future__ import annotations

import logging

import torch
import torch.fx as fx
from torch._dispatch.python import enable_python_dispatcher
from torch._guards import detect_fake_mode
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols
from torch.fx.passes.fake_tensor_prop import FakeTensorProp

from .context import GraphContext, RewriteError, propagate_fresh, run_on_real_inputs
from .dataflow import DataflowView
from .decode_positions import DecodePositionPass
from .derived_positions import DerivedPositionsPass
from .dropped_slots import DroppedSlotMaskPass
from .inner_merge import InnerMergePass
from .outer_merge import OuterMergePass
from .saliency_export import SaliencyExportPass
from .sequence_length import SequenceLengthPass
from .sliding_window import SlidingWindowPass
from .vision_saliency import VisionSaliencyPass

log = logging.getLogger("holitom_fx.passes")


def _dynamic_example(node: fx.Node) -> FakeTensor | None:
    example = node.meta.get("example_value")
    dynamic = isinstance(example, FakeTensor) and any(isinstance(s, torch.SymInt) for s in example.shape)
    return example if dynamic else None


def _fake_input(fake_mode, node: fx.Node, value):
    """The fake a graph input propagates with: Dynamo's own for a dynamic-shape input (a static copy would
    specialize its sizes in Dynamo's shape environment: a guard, then a recompile at every new size)."""
    example = _dynamic_example(node)
    if example is not None:
        return example
    return fake_mode.from_tensor(value, static_shapes=True) if isinstance(value, torch.Tensor) else value


def _kept_unused(node: fx.Node) -> bool:
    """Nodes dead-code removal keeps though nothing reads them: FX's impure ones and every in-place call
    (``copy_`` of a linear-attention layer's recurrent state into its cache, the segments' buffer), which
    FX does not count as impure when it is a method call."""
    if node.op in ("placeholder", "output") or node.is_impure():
        return True
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    return node.op in ("call_method", "call_function") and name.endswith("_") and not name.endswith("__")


class PassManager:
    """Runs the HoliTom passes on a Dynamo graph in order; returns rewrites per pass."""

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx
        self.passes = [VisionSaliencyPass(ctx), OuterMergePass(ctx), InnerMergePass(ctx), SlidingWindowPass(ctx),
                       DerivedPositionsPass(ctx),
                       SequenceLengthPass(ctx),
                       DecodePositionPass(ctx), DroppedSlotMaskPass(ctx), SaliencyExportPass(ctx)]

    def __call__(self, gm: fx.GraphModule, example_inputs: list) -> dict[str, int]:
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        self.ctx.example_values = {n.name: value for n, value in zip(placeholders, example_inputs)
                                   if isinstance(value, torch.Tensor) and not isinstance(value, FakeTensor)}
        counts = {}
        for rewrite in self.passes:
            self.ctx.view = DataflowView(gm.graph, self.ctx.vision_classes)
            counts[type(rewrite).__name__] = rewrite(gm.graph)
        if any(counts.values()):
            gm.graph.eliminate_dead_code(is_impure_node=_kept_unused)
            try:
                gm.graph.lint()
            except RuntimeError as err:  # a pass left the graph ill-formed: never compile that
                raise RewriteError(f"rewritten graph is ill-formed: {err}") from err
            gm.recompile()
            self._propagate_shapes(gm, example_inputs)
        return counts

    def _propagate_shapes(self, gm: fx.GraphModule, example_inputs: list) -> None:
        """Re-run shape propagation: proves the rewritten graph is consistent, refreshes metadata."""
        inputs = list(example_inputs) + [self.ctx.runtime_input(name) for name in self.ctx.extra_inputs]
        fake_mode = detect_fake_mode(inputs)  # Dynamo's while it compiles; none for a runtime specialization
        try:
            if fake_mode is None:
                propagate_fresh(gm, inputs)
            else:
                for node in gm.graph.nodes:  # a rewritten graph binds fresh unbacked symbols (sizes changed)
                    node.meta.pop("unbacked_bindings", None)
                placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
                fake_mode = next((n.meta["example_value"].fake_mode for n in placeholders
                                  if _dynamic_example(n) is not None), fake_mode)
                fakes = [_fake_input(fake_mode, node, x) for node, x in zip(placeholders, inputs)]
                with enable_python_dispatcher():  # as Dynamo traced: symbolic sizes reach the Python decompositions
                    FakeTensorProp(gm, fake_mode).propagate_dont_convert_inputs(*fakes)
        except Exception as err:  # any inconsistency means the rewrite is unsafe
            first_line = next((line for line in str(err).splitlines() if line.strip()), "")
            raise RewriteError(f"rewritten graph does not propagate shapes: {type(err).__name__}: {first_line}") \
                from err
        for node in gm.graph.nodes:
            if "val" in node.meta:
                node.meta["example_value"] = node.meta["val"]
        self._run_data_dependent(gm, inputs)

    @staticmethod
    def _run_data_dependent(gm: fx.GraphModule, inputs: list) -> None:
        """Sizes that depend on data (a boolean-mask index: Qwen3-VL's deepstack, MoE routing) are not
        proven by fake tensors; a graph that has them runs once on the real example inputs (tensor inputs
        other than weights copied: no input is mutated) and must not raise."""
        def data_dependent(node: fx.Node) -> bool:  # an unbacked size (u0), not a dynamic input size (s0)
            value = node.meta.get("val")
            return isinstance(value, torch.Tensor) and bool(free_unbacked_symbols(value))

        if not any(data_dependent(node) for node in gm.graph.nodes):
            return
        if any(isinstance(x, FakeTensor) for x in inputs):
            raise RewriteError("data-dependent sizes in the rewritten graph and no real inputs to check them on")
        try:
            run_on_real_inputs(gm, inputs)
        except Exception as err:  # noqa: BLE001 - any failure means the rewrite is unsafe
            raise RewriteError(f"rewritten graph fails on its example inputs: {type(err).__name__}: "
                               f"{str(err).splitlines()[0] if str(err) else ''}") from err
