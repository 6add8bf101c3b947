"""InnerMergePass: at decoder layer K, keep the visual tokens the last query attends to, fold the rest."""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from holitom_fx.ops import (gather_tokens, inner_kept_count, kept_slots, last_query_attention, last_query_probabilities,
                           restore_dropped_slots)
from holitom_fx.ops.stages import inner_stage

from .context import (SDPA_TARGETS, GraphContext, InnerSite, RewriteError, is_weight, mark_inserted, sdpa_arguments,
                      sdpa_inputs, shape_of)

_SOFTMAX_TARGETS = (torch.softmax, torch.nn.functional.softmax, torch.Tensor.softmax, "softmax")


class InnerMergePass:
    """Insert ``inner_stage`` before layer K; layers K.. read the shortened hidden state.

    Layer K's input is the one tensor layer K reads from layer K-1. Every other tensor
    layers K.. read from before layer K that runs along the sequence (rotary cos/sin,
    masks) is gathered with the same kept indices, so kept tokens keep their positions.
    The last query's attention comes from layer K-1's SDPA call (recomputed from its q/k) or,
    for hand-written attention, from its own softmax over ``[B, H, L, L]`` scores (in a hybrid model
    whose layer K-1 is linear attention, from the nearest attention layer below it).
    """

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        if ctx.video is None:
            return 0
        layer_of = ctx.view.layers.decoder
        depth = ctx.view.layers.depth
        if depth < 2:
            ctx.notes.append("inner stage skipped: fewer than two decoder layers in this graph")
            return 0
        layer = ctx.config.resolve_inner_layer(depth)
        if layer is None:
            return 0
        traced_length, length = ctx.video.length, ctx.video.new_length  # metadata still holds the traced L
        caches: list[fx.Node] = []
        if ctx.video.batch > 1:
            caches = self._cache_outputs(graph, layer, traced_length)
            if caches is None:
                ctx.notes.append(f"inner stage skipped: batch > 1 needs SDPA attention in layers {layer}.. (their "
                                 "decode masks hide the cache slots the stage drops)")
                return 0
        shared = self._reads_keys_from_below(layer)
        if shared is not None:
            ctx.notes.append(f"inner stage skipped: decoder layer {shared} reads the keys and values of a layer "
                             f"below {layer} (shared KV cache), whose cache keeps every token")
            return 0
        order = ctx.view.order
        first = next(n for n in graph.nodes if layer_of.get(n) == layer)
        inputs = {a for n in graph.nodes if layer_of.get(n) == layer for a in n.all_input_nodes
                  if layer_of.get(a) == layer - 1}
        hidden = [a for a in inputs if (shape_of(a) or (0, 0))[:2] == (ctx.video.batch, traced_length)]
        if len(hidden) != 1:
            raise RewriteError(f"cannot tell decoder layer {layer}'s input hidden state apart ({len(hidden)} candidates)")
        hidden = hidden[0]

        with graph.inserting_before(first):
            attention = self._last_query_attention(graph, layer - 1, traced_length)
        if attention is None:
            ctx.notes.append(f"inner stage skipped: no decoder layer below layer {layer} has softmax attention "
                             "(all linear attention) to rank the tokens by")
            return 0
        mark_inserted(attention)
        span = ctx.video.merged_tokens
        with graph.inserting_before(first):
            stage = mark_inserted(graph.call_function(
                inner_stage, (hidden, attention, ctx.video.span_start, span, ctx.config.inner_ratio),
                {"frame_spans": ctx.video.frame_spans}))
            merged = mark_inserted(graph.call_function(operator.getitem, (stage, 0)))
            keep = mark_inserted(graph.call_function(operator.getitem, (stage, 1)))

        replacements = {hidden: merged}
        for node in list(graph.nodes):
            if order.get(node, -1) < order[first] or node.meta.get("holitom") or node.op == "output":
                continue
            for arg in node.all_input_nodes:
                if arg in replacements or order.get(arg, len(order)) >= order[first] or is_weight(arg):
                    continue
                shape = shape_of(arg)
                if shape is None or traced_length not in shape:
                    continue
                # batch 1 here: a leading L is a sequence dim (a mask [L, L] shared by the layers)
                dims = tuple(d for d, size in enumerate(shape) if size == traced_length and (d or size != 1))
                with graph.inserting_before(first):
                    replacements[arg] = mark_inserted(graph.call_function(gather_tokens, (arg, keep, dims)))
            node.args = fx.map_arg(node.args, lambda a: replacements.get(a, a))
            node.kwargs = fx.map_arg(node.kwargs, lambda a: replacements.get(a, a))

        kept_visual = inner_kept_count(span, ctx.config.inner_ratio)
        ctx.inner = InnerSite(layer=layer, visual_tokens=kept_visual,
                              new_length=length - ctx.video.videos * (span - kept_visual),
                              outputs=list(replacements.values()), exports_kept_slots=bool(caches))
        if caches:
            self._keep_full_length_caches(graph, caches, keep, length)
        return len(replacements) + len(caches)

    def _cache_outputs(self, graph: fx.Graph, layer: int, traced_length: int) -> list[fx.Node] | None:
        """The keys and values the graph returns to the cache of every layer from ``layer`` on (``[B, H, L, D]``
        read by that layer's SDPA call), or None unless each such layer attends with SDPA."""
        view = self.ctx.view
        layer_of = view.layers.decoder
        calls = [n for n, index in layer_of.items() if index >= layer and n.target in SDPA_TARGETS]
        read = set()
        for call in calls:
            bound = sdpa_arguments(call)
            key, value = bound["key"], bound["value"]
            read |= {key, value} | view.ancestors(key) | view.ancestors(value)
        output = next(n for n in graph.nodes if n.op == "output")
        results = output.args[0] if isinstance(output.args[0], (tuple, list)) else ()
        caches = [r for r in results if isinstance(r, fx.Node) and r in read and layer_of.get(r, -1) >= layer
                  and len(shape_of(r) or ()) == 4 and shape_of(r)[2] == traced_length]
        return caches if calls and len(caches) == 2 * len(calls) else None

    def _keep_full_length_caches(self, graph: fx.Graph, caches: list[fx.Node], keep: fx.Node, length: int) -> None:
        """A padded batch: transformers builds one decode mask from layer 0's cache, so the caches of layers K..
        keep the prefill's ``length`` slots, the dropped ones zero (prefill savings kept, decode savings given
        up); the graph returns the kept slots as one more output, which the backend strips and hands to the
        decode graphs (``DroppedSlotMaskPass``) to mask the dropped ones in layers K..."""
        output = next(n for n in graph.nodes if n.op == "output")
        with graph.inserting_before(output):
            restored = {c: mark_inserted(graph.call_function(restore_dropped_slots, (c, keep, length, 2)))
                        for c in caches}
            slots = mark_inserted(graph.call_function(kept_slots, (keep, length)))
        output.args = ((*(restored.get(r, r) for r in output.args[0]), slots),)

    def _reads_keys_from_below(self, layer: int) -> int | None:
        """A decoder layer from ``layer`` on whose attention reads keys made in a layer below it (Gemma 3n/4's
        KV sharing), or None. Shortening such a layer's queries alone would leave its cache, and the decode
        mask built from it, at another length than the layer it reads."""
        layer_of = self.ctx.view.layers.decoder
        for node, index in layer_of.items():
            if index >= layer and node.target in SDPA_TARGETS:
                made_in = layer_of.get(sdpa_inputs(node)[1])
                if made_in is not None and made_in < layer:
                    return index
        return None

    def _last_query_attention(self, graph: fx.Graph, layer: int, length: int) -> fx.Node | None:
        """A node computing the head-averaged attention of the last query, ``[B, L]``: layer ``layer``'s, or,
        where that layer has no softmax attention (a hybrid model's linear-attention layer), the nearest
        attention layer below it (noted); None when no layer up to ``layer`` has one."""
        for source in range(layer, -1, -1):
            in_layer = [n for n, index in self.ctx.view.layers.decoder.items() if index == source]
            calls = [n for n in in_layer if n.target in SDPA_TARGETS]
            softmaxes = [n for n in in_layer if n.target in _SOFTMAX_TARGETS and len(shape_of(n) or ()) == 4
                         and shape_of(n)[-2:] == (length, length)]
            if not calls and not softmaxes:
                continue
            if source != layer:
                self.ctx.notes.append(f"decoder layer {layer} has no softmax attention (linear attention): the "
                                      f"inner stage ranks by layer {source}'s")
            if len(calls) == 1:
                query, key, attn_mask, scale = sdpa_inputs(calls[0])
                return graph.call_function(last_query_attention, (query, key, attn_mask, scale))
            if not calls and len(softmaxes) == 1:
                return graph.call_function(last_query_probabilities, (softmaxes[0],))
            raise RewriteError(f"decoder layer {source}: expected one attention (an SDPA call or a softmax over "
                               f"[B, H, {length}, {length}] scores), found {len(calls)} SDPA and {len(softmaxes)} "
                               "softmax")
        return None
