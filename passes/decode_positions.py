"""DecodePositionPass: decoding after a merged prefill continues at the positions the config says.

``generate()`` numbers decode positions by the prompt it was given (L + step); with
``positions="compact"`` the merged prompt had L' tokens, so each decode step must sit at
``position - (L - L')``. A model that derives its positions from its cache length instead (an
``arange`` reaching its rotary tables or position embeddings) counts from L': with
``positions="original"`` those sit at ``arange + (L - L')``. The shift is known only when the
prefill runs, so it enters the decode graph as one extra runtime input that the backend supplies
(0 after an unmerged prefill).
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .context import GraphContext, mark_inserted, tensor_of

POSITION_SHIFT = "holitom_position_shift"
DERIVED_POSITION_SHIFT = "holitom_derived_position_shift"


def is_cache_input(node: fx.Node) -> bool:
    """A key/value cache input: a floating ``[B, H, S, D]`` graph input named as a cache (transformers passes
    ``cache=``, older versions ``past_key_values=``; a model of its own, whatever it calls it)."""
    value = tensor_of(node)
    return node.op == "placeholder" and ("cache" in node.name.lower() or "past_key_values" in node.name) and \
        value is not None and value.is_floating_point() and value.dim() == 4


def is_sliding_window_cache_input(node: fx.Node) -> bool:
    """A cache layer's sliding-window size, lifted as an integer scalar input (transformers'
    ``DynamicSlidingWindowLayer``). Such a layer counts its tokens in a Python int that Dynamo replays at the
    traced length, which the graph cannot change (``passes.sliding_window``)."""
    value = tensor_of(node)
    return node.op == "placeholder" and "cache" in node.name.lower() and "sliding_window" in node.name and \
        value is not None and value.dim() == 0 and not value.is_floating_point()


def _is_position_input(node: fx.Node) -> bool:
    return node.op == "placeholder" and "position_ids" in node.target


def decode_position_input(graph: fx.Graph) -> int | None:
    """Index of a decode graph's one position-ids input among its placeholders, or None."""
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    positions = [i for i, n in enumerate(placeholders) if _is_position_input(n)]
    return positions[0] if len(positions) == 1 and any(is_cache_input(n) for n in placeholders) else None


class DecodePositionPass:
    """Only after a merged prefill of this model (``GraphContext.merged_prefill_seen``): a model that never
    merged keeps its decode graphs as traced."""

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        if ctx.video is not None:
            return 0
        at = decode_position_input(graph)
        if at is None:  # 0 until a prefill merges: a decode graph compiled before one still follows it
            return self._shift_derived(graph) if ctx.positions == "original" else 0
        if ctx.positions != "compact" or not ctx.merged_prefill_seen:  # before: shifted outside (the backend)
            return 0
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        with graph.inserting_after(placeholders[-1]):
            shift = mark_inserted(graph.placeholder(POSITION_SHIFT))
        with graph.inserting_after(shift):
            shifted = mark_inserted(graph.call_function(operator.sub, (placeholders[at], shift)))
        placeholders[at].replace_all_uses_with(shifted, delete_user_cb=lambda user: user is not shifted)
        ctx.extra_inputs.append(POSITION_SHIFT)
        return 1

    def _shift_derived(self, graph: fx.Graph) -> int:
        """Positions derived with ``arange`` from the cache length: ``+ shift`` on the path into the position
        encodings only (a copy of that path; masks keep reading the cache's own numbering)."""
        view = self.ctx.view
        if not view.one_new_token:
            return 0  # a prompt starts at 0 wherever it came from
        ranges = [n for n in graph.nodes if n.target is torch.arange]
        chain, sinks = view.encoding_path(ranges)
        if not sinks:
            return 0
        last = [n for n in graph.nodes if n.op == "placeholder"][-1]
        with graph.inserting_after(last):
            shift = mark_inserted(graph.placeholder(DERIVED_POSITION_SHIFT))
        copies: dict[fx.Node, fx.Node] = {}
        for node in [n for n in graph.nodes if n in chain]:
            with graph.inserting_after(node):
                copies[node] = mark_inserted(graph.call_function(operator.add, (node, shift)) if node in ranges
                                             else graph.node_copy(node, lambda a: copies.get(a, a)))
        for sink in sinks:
            sink.args = fx.map_arg(sink.args, lambda a: copies.get(a, a))
            sink.kwargs = fx.map_arg(sink.kwargs, lambda a: copies.get(a, a))
        self.ctx.extra_inputs.append(DERIVED_POSITION_SHIFT)
        return len(copies)
