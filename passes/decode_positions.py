"""DecodePositionPass: decoding after a merged prefill continues at the positions the config says.

``generate()`` numbers decode positions by the prompt it was given (L + step); with
``positions="compact"`` the merged prompt had L' tokens, so each decode step must sit at
``position - (L - L')``. A model that derives its positions from its cache length instead (an
``arange`` reaching its rotary tables or position embeddings) counts from L': with
``positions="original"`` those sit at ``arange + (L - L')``. The shift is known only when the
prefill runs, so it enters the decode graph as one extra runtime input that the backend supplies
(0 after an unmerged prefill).

A count read off a sliding-window cache layer (transformers' ``DynamicSlidingWindowLayer.cumulative_length``,
lifted into the decode graph as an integer input) need not be the cache's length: Dynamo replays the
prefill's traced length L into it (``passes.sliding_window``), or the rewritten L' where it reconstructs a
symbolic count from the graph. Positions derived from it (EXAONE-4.5: ``arange + cache.get_seq_length()``, its
first layer sliding) take a runtime input of their own, ``SLIDING_COUNT_SHIFT``: the backend reads the count
at the first decode step after each prefill and sets the shift to the merged prompt's next position (L' for
``"compact"``, L for ``"original"``) minus that count; 0 after an unmerged prefill. The input's index is
``GraphContext.sliding_count``.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .context import GraphContext, mark_inserted, tensor_of

POSITION_SHIFT = "holitom_position_shift"
DERIVED_POSITION_SHIFT = "holitom_derived_position_shift"
SLIDING_COUNT_SHIFT = "holitom_sliding_count_shift"


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


def is_sliding_count_input(node: fx.Node) -> bool:
    """A sliding-window cache layer's token count, lifted as an integer input (``cumulative_length``): it says
    the prefill's traced length L after a merged prefill, not the L' tokens the cache was given."""
    value = node.meta.get("example_value")
    return node.op == "placeholder" and "cache" in node.name.lower() and "cumulative_length" in node.name and \
        isinstance(value, (int, torch.SymInt))


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
            return self._shift_derived(graph)
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
        encodings only (a copy of that path; masks keep reading the cache's own numbering). The shift is
        ``SLIDING_COUNT_SHIFT`` where the path reads a sliding layer's count (from L), else
        ``DERIVED_POSITION_SHIFT`` (from L', only needed for ``positions="original"``)."""
        view = self.ctx.view
        if not view.one_new_token:
            return 0  # a prompt starts at 0 wherever it came from
        ranges = [n for n in graph.nodes if n.target is torch.arange]
        chain, sinks = view.encoding_path(ranges)
        if not sinks:
            return 0
        counts = {n for n in graph.find_nodes(op="placeholder") if is_sliding_count_input(n)}
        read = frozenset().union(*(view.ancestors(n) for n in chain)) if counts else frozenset()
        name = SLIDING_COUNT_SHIFT if counts & read else DERIVED_POSITION_SHIFT
        if name == SLIDING_COUNT_SHIFT:  # where the backend reads the count, among the inputs as traced
            placeholders = list(graph.find_nodes(op="placeholder"))
            self.ctx.sliding_count = min(placeholders.index(n) for n in counts & read)
        if name == DERIVED_POSITION_SHIFT and self.ctx.positions != "original":
            return 0  # counted from L' = the merged prompt's compact positions already
        last = [n for n in graph.nodes if n.op == "placeholder"][-1]
        with graph.inserting_after(last):
            shift = mark_inserted(graph.placeholder(name))
        copies: dict[fx.Node, fx.Node] = {}
        for node in [n for n in graph.nodes if n in chain]:
            with graph.inserting_after(node):
                copies[node] = mark_inserted(graph.call_function(operator.add, (node, shift)) if node in ranges
                                             else graph.node_copy(node, lambda a: copies.get(a, a)))
        for sink in sinks:
            sink.args = fx.map_arg(sink.args, lambda a: copies.get(a, a))
            sink.kwargs = fx.map_arg(sink.kwargs, lambda a: copies.get(a, a))
        self.ctx.extra_inputs.append(name)
        return len(copies)
