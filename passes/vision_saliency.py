"""VisionSaliencyPass: the saliency of the spec, from the vision encoder's own q/k, inside the graph.

Anchor: the SDPA call of the encoder layer whose output feeds the projector (the layout
record names it). After it, ``ops.attention_received`` recomputes the attention each patch
receives from that call's q/k, and ``ops.pool_saliency`` pools it to the frame grid.
The outer pass consumes it when the video is merged in the same graph; otherwise
``SaliencyExportPass`` hands it to the backend as an extra graph output.
"""

from __future__ import annotations

import torch.fx as fx

from holitom_fx.archs import SaliencyGrid
from holitom_fx.ops import attention_received, pool_saliency

from .context import SDPA_TARGETS, GraphContext, SaliencyCandidate, mark_inserted, sdpa_inputs, shape_of


def insert_pooling(graph: fx.Graph, saliency: fx.Node, grid: SaliencyGrid) -> fx.Node:
    """``ops.pool_saliency`` of a per-patch saliency node to the frame grid, right after it."""
    with graph.inserting_after(saliency):
        return mark_inserted(graph.call_function(
            pool_saliency, (saliency, grid.drop_leading, grid.side, grid.pooled_side, grid.mode)))


class VisionSaliencyPass:
    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        by_layer: dict[int, list[fx.Node]] = {}
        for node in graph.nodes:
            layer = ctx.view.layers.vision.get(node) if node.target in SDPA_TARGETS else None
            if layer is not None:
                by_layer.setdefault(layer, []).append(node)
        if not by_layer:
            return 0
        layer = ctx.layout.saliency_layer(ctx.model_config)
        if layer is not None and layer not in by_layer:
            ctx.notes.append(f"vision layer {layer} feeding the projector has no SDPA call in this graph")
            return 0
        # No record: every layer is a candidate; the outer pass takes the last one above the features
        # (dead-code removal drops the others).
        anchors = by_layer[layer] if layer is not None else [n for calls in by_layer.values() for n in calls]
        grid = ctx.layout.saliency_grid(ctx.model_config) if ctx.layout.saliency_grid else None
        for attention in anchors:
            query, key, attn_mask, scale = sdpa_inputs(attention)
            frames, patches = (shape_of(query) or (None,) * 3)[0], (shape_of(key) or (None,) * 3)[2]
            with graph.inserting_after(attention):
                saliency = mark_inserted(graph.call_function(attention_received, (query, key, attn_mask, scale)))
            if grid is not None:
                saliency = insert_pooling(graph, saliency, grid)
            tokens = grid.pooled_side ** 2 if grid is not None else patches
            ctx.saliency_candidates[saliency] = SaliencyCandidate(
                attention, ctx.view.layers.vision[attention], frames, tokens, pooled=grid is not None)
        return len(anchors)
