"""DerivedPositionsPass: ``positions="original"`` where the graph derives its positions itself.

A plain ``model(**inputs)`` call, or a model that numbers its tokens with ``arange`` inside
``forward`` (rotary tables, learned absolute position embeddings), has no position input to
gather. After the boundary, such a derivation is ``arange(.., L)``: ``SequenceLengthPass``
shortens it to L' for every consumer (the compact numbering, and contiguous positions for mask
building). Here, for ``positions="original"``, the part of the derivation that reaches a position
encoding (``cos``/``sin``, or an embedding lookup) is copied at full length and each merged token
takes the value of the original token it stands for (``video.source``) where the copy enters the
encoding, so no gap ever reaches a mask.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from holitom_fx.ops import gather_tokens

from .context import GraphContext, RewriteError, mark_inserted, shape_of


class DerivedPositionsPass:
    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx, video = self.ctx, self.ctx.video
        if video is None or ctx.positions != "original":
            return 0
        view, old = ctx.view, video.length
        after = [n for n in graph.nodes if view.order[n] > view.order[video.last_inserted]]
        ranges = [n for n in after if n.target is torch.arange and old in n.args and not n.meta.get("holitom")]
        path, sinks = view.encoding_path(ranges)
        if not sinks:
            return 0
        full = [n for n in after if n in path and not n.meta.get("holitom")]  # copied at full length
        copies: dict[fx.Node, fx.Node] = {}
        for node in full:
            with graph.inserting_after(node):
                copies[node] = mark_inserted(graph.node_copy(node, lambda a: copies.get(a, a)))
        rewrites = 0
        for reader in [n for n in after if (n in path or n in sinks) and n not in copies]:
            for arg in [a for a in reader.all_input_nodes if a in copies]:
                shape = shape_of(arg)
                dims = [d for d, size in enumerate(shape or ()) if size == old]
                if len(dims) != 1:
                    raise RewriteError(f"positions='original': cannot tell the sequence dim of {arg.name} {shape}")
                if dims[0] == 0 and video.batch != 1:
                    raise RewriteError("positions='original' on positions derived without a batch dim needs batch 1")
                with graph.inserting_before(reader):
                    taken = mark_inserted(graph.call_function(gather_tokens, (copies[arg], video.source, tuple(dims))))
                reader.replace_input_with(arg, taken)
                rewrites += 1
        ctx.derived_positions = rewrites > 0
        return rewrites
