"""DroppedSlotMaskPass: a padded batch's decode steps do not attend to the tokens the inner stage dropped.

In a batch > 1, the caches of layers K.. keep the prefill's full length with the dropped tokens' slots
zeroed (``InnerMergePass``), because transformers builds one decode mask from layer 0's cache. Each SDPA
call of layers K.. in a decode graph then gets that mask with those slots hidden
(``ops.mask_dropped_slots``); the slots enter as one runtime input that the backend takes from the last
prefill. Every decode graph of a batch > 1 gets it while the inner stage is on, so a graph traced before
any merged prefill (a text-only batch first) still masks after one: all slots are visible then.
"""

from __future__ import annotations

import torch
import torch.fx as fx

from holitom_fx.ops import mask_dropped_slots

from .context import KEPT_SLOTS, SDPA_TARGETS, GraphContext, RewriteError, mark_inserted, sdpa_arguments, tensor_of
from .decode_positions import is_cache_input

class DroppedSlotMaskPass:
    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        if ctx.video is not None or not ctx.config.inner_enabled or not ctx.view.one_new_token:
            return 0
        caches = [tensor_of(n) for n in graph.find_nodes(op="placeholder") if is_cache_input(n)]
        if not caches or caches[0].shape[0] < 2:
            return 0
        batch = caches[0].shape[0]
        layer = ctx.config.resolve_inner_layer(ctx.view.layers.depth) if ctx.view.layers.depth >= 2 else None
        if layer is None:
            return 0
        calls = [n for n, index in ctx.view.layers.decoder.items() if index >= layer and n.target in SDPA_TARGETS]
        if not calls:
            return 0
        if ctx.kept_slots is None or ctx.kept_slots.shape[0] != batch:  # no padded prefill yet: nothing hidden
            ctx.kept_slots = torch.ones(batch, 0, dtype=torch.bool)
        with graph.inserting_after(list(graph.find_nodes(op="placeholder"))[-1]):
            slots = mark_inserted(graph.placeholder(KEPT_SLOTS))
        for call in calls:
            bound = sdpa_arguments(call)
            if bound.get("is_causal") is True:
                raise RewriteError("a decode step's SDPA call in layers K.. is causal: its dropped cache slots "
                                   "cannot be masked")
            with graph.inserting_before(call):
                mask = mark_inserted(graph.call_function(mask_dropped_slots,
                                                         (bound.get("attn_mask"), slots, bound["key"])))
            if len(call.args) > 3:
                call.update_arg(3, mask)
            else:
                call.update_kwarg("attn_mask", mask)
        ctx.extra_inputs.append(KEPT_SLOTS)
        return len(calls)
