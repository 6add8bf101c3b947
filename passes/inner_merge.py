"""InnerMergePass: at decoder layer K, keep the visual tokens the last query attends to, fold the rest."""

from __future__ import annotations

import operator

import torch.fx as fx

from holitom_fx.ops import gather_tokens, inner_kept_count
from holitom_fx.ops.stages import inner_stage

from .context import (SDPA_TARGETS, GraphContext, InnerSite, RewriteError, is_weight, mark_inserted, sdpa_inputs,
                      shape_of)
from .module_stack import decoder_layer

class InnerMergePass:
    """Insert ``inner_stage`` before layer K; layers K.. read the shortened hidden state.

    Layer K's input is the one tensor layer K reads from layer K-1. Every other tensor
    layers K.. read from before layer K that runs along the sequence (rotary cos/sin,
    masks) is gathered with the same kept indices, so kept tokens keep their positions.
    """

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        if ctx.video is None:
            return 0
        layer_of = {node: decoder_layer(node, ctx.vision_classes) for node in graph.nodes}
        depth = max((layer for layer in layer_of.values() if layer is not None), default=-1) + 1
        if depth < 2:
            ctx.notes.append("inner stage skipped: fewer than two decoder layers in this graph")
            return 0
        layer = ctx.config.resolve_inner_layer(depth)
        if layer is None:
            return 0
        if ctx.video.batch > 1:
            # Layers K.. would keep shorter caches than layers < K; transformers builds one decode
            # mask from layer 0's cache length, which cannot mask a padded batch's shorter caches.
            ctx.notes.append("inner stage skipped: batch > 1 (per-layer cache lengths break padded decoding)")
            return 0
        attention = [n for n in graph.nodes if n.target in SDPA_TARGETS and layer_of[n] == layer - 1]
        if len(attention) != 1:
            raise RewriteError(f"expected one SDPA call in decoder layer {layer - 1}, found {len(attention)}")
        order = {node: index for index, node in enumerate(graph.nodes)}
        first = next(n for n in graph.nodes if layer_of[n] == layer)
        inputs = {a for n in graph.nodes if layer_of[n] == layer for a in n.all_input_nodes if layer_of[a] == layer - 1}
        traced_length, length = ctx.video.length, ctx.video.new_length  # metadata still holds the traced L
        hidden = [a for a in inputs if (shape_of(a) or (0, 0))[:2] == (ctx.video.batch, traced_length)]
        if len(hidden) != 1:
            raise RewriteError(f"cannot tell decoder layer {layer}'s input hidden state apart ({len(hidden)} candidates)")
        hidden = hidden[0]

        query, key, attn_mask, scale = sdpa_inputs(attention[0])
        span = ctx.video.merged_tokens
        with graph.inserting_before(first):
            stage = mark_inserted(graph.call_function(
                inner_stage, (hidden, query, key, attn_mask, scale, ctx.video.span_start, span, ctx.config.inner_ratio),
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
                if shape is None or traced_length not in shape[1:]:
                    continue
                dims = tuple(d for d in range(1, len(shape)) if shape[d] == traced_length)
                with graph.inserting_before(first):
                    replacements[arg] = mark_inserted(graph.call_function(gather_tokens, (arg, keep, dims)))
            node.args = fx.map_arg(node.args, lambda a: replacements.get(a, a))
            node.kwargs = fx.map_arg(node.kwargs, lambda a: replacements.get(a, a))

        kept_visual = inner_kept_count(span, ctx.config.inner_ratio)
        ctx.inner = InnerSite(layer=layer, visual_tokens=kept_visual,
                              new_length=length - ctx.video.videos * (span - kept_visual),
                              outputs=list(replacements.values()))
        return len(replacements)
