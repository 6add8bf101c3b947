"""SaliencyExportPass: an encoder-only graph returns its saliency as one more output.

Under ``generate()`` the video is encoded in its own graph before the prefill (TRACING_NOTES),
and a graph break can split encoder and merge in a plain call too. The saliency computed
there leaves through one more graph output, which the backend strips and feeds to the next
merged prefill. A graph that also runs the language model consumes or drops its own saliency
(an image, or a video it merges itself), so it exports nothing.
"""

from __future__ import annotations

import torch.fx as fx

from .context import GraphContext


class SaliencyExportPass:
    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        unused = [node for node, found in ctx.saliency_candidates.items() if found.pooled and not node.users]
        if ctx.video is not None or not unused:
            return 0
        if ctx.view.layers.decoder:
            ctx.notes.append("saliency not exported: this graph runs the language model too")
            return 0
        if len(unused) != 1:
            ctx.notes.append(f"saliency not exported: {len(unused)} encoder calls in one vision graph")
            return 0
        output = next(node for node in graph.nodes if node.op == "output")
        results = output.args[0]
        if not isinstance(results, (tuple, list)):
            ctx.notes.append("saliency not exported: the vision graph does not return a tuple")
            return 0
        output.args = ((*results, unused[0]),)
        ctx.exported_saliency = True
        return 1
