"""DecodePositionPass: decoding after a compact-merged prefill continues at the shortened length.

``generate()`` numbers decode positions by the prompt it was given (L + step); with
``positions="compact"`` the merged prompt had L' tokens, so each decode step must sit at
``position - (L - L')``. The shift is known only when the prefill runs, so it enters the
decode graph as one extra runtime input that the backend supplies (0 after an unmerged prefill).
"""

from __future__ import annotations

import operator

import torch.fx as fx

from .context import GraphContext, mark_inserted

POSITION_SHIFT = "holitom_position_shift"


def _is_cache_input(node: fx.Node) -> bool:
    return node.op == "placeholder" and "past_key_values" in node.target


def _is_position_input(node: fx.Node) -> bool:
    return node.op == "placeholder" and "position_ids" in node.target


class DecodePositionPass:
    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        if ctx.video is not None or ctx.positions != "compact":
            return 0
        placeholders = [n for n in graph.nodes if n.op == "placeholder"]
        positions = [n for n in placeholders if _is_position_input(n)]
        if not any(_is_cache_input(n) for n in placeholders) or len(positions) != 1:
            return 0
        with graph.inserting_after(placeholders[-1]):
            shift = mark_inserted(graph.placeholder(POSITION_SHIFT))
        with graph.inserting_after(shift):
            shifted = mark_inserted(graph.call_function(operator.sub, (positions[0], shift)))
        positions[0].replace_all_uses_with(shifted, delete_user_cb=lambda user: user is not shifted)
        ctx.extra_inputs.append(POSITION_SHIFT)
        return 1
