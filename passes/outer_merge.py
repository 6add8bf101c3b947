"""OuterMergePass: find where video features are scattered into the text embeddings, merge there."""

from __future__ import annotations

import operator
from dataclasses import astuple

import torch
import torch.fx as fx

from holitom_fx.ops import exact_budget
from holitom_fx.ops.stages import outer_stage

from .context import (SALIENCY, SALIENCY_VALID, WINDOW_END, GraphContext, RewriteError, VideoSite, mark_inserted,
                      shape_of)

_SCATTER_TARGETS = ("masked_scatter", torch.Tensor.masked_scatter, torch.masked_scatter)
_EQ_TARGETS = (operator.eq, torch.eq, "eq", "__eq__", torch.Tensor.eq)


def _is_scatter(node: fx.Node) -> bool:
    return node.op in ("call_method", "call_function") and node.target in _SCATTER_TARGETS


def _compares_with(node: fx.Node, token_id: int, depth: int = 8) -> bool:
    """Whether ``node`` derives from ``x == token_id`` within a few steps up the graph."""
    frontier, seen = [node], set()
    for _ in range(depth):
        next_frontier = []
        for current in frontier:
            if current in seen or not isinstance(current, fx.Node):
                continue
            seen.add(current)
            if current.target in _EQ_TARGETS and token_id in current.args:
                return True
            next_frontier.extend(current.all_input_nodes)
        frontier = next_frontier
    return False


def find_video_scatter(graph: fx.Graph, token_id: int) -> fx.Node | None:
    """The scatter whose mask marks the video placeholder tokens, or None.

    Anchor: ``inputs_embeds.masked_scatter(mask, features)`` with ``mask`` derived from
    ``input_ids == video_token_id``; image scatters (another token id) are left alone.
    """
    found = [n for n in graph.nodes if _is_scatter(n) and _compares_with(n.args[1], token_id)]
    if len(found) > 1:
        raise RewriteError(f"{len(found)} video scatters in one graph; one video per prompt is supported")
    return found[0] if found else None


def has_video_scatter(graph: fx.Graph, ctx: GraphContext) -> bool:
    """Whether the graph scatters video features (the outer pass would rewrite it)."""
    if ctx.layout is None or ctx.model_config is None:
        return False
    token_id = ctx.layout.video_token_id(ctx.model_config)
    try:
        return token_id is not None and find_video_scatter(graph, token_id) is not None
    except RewriteError:  # more than one: the outer pass says why
        return True


def _ancestors(node: fx.Node) -> set[fx.Node]:
    seen, stack = set(), [node]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(current.all_input_nodes)
    return seen


def _add_placeholder(graph: fx.Graph, name: str) -> fx.Node:
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last):
        return mark_inserted(graph.placeholder(name))


class OuterMergePass:
    """Insert ``outer_stage`` right after the video scatter and reroute every use of its output."""

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        if ctx.layout is None or ctx.model_config is None:
            ctx.notes.append("no video layout record for this model")
            return 0
        token_id = ctx.layout.video_token_id(ctx.model_config)
        scatter = find_video_scatter(graph, token_id) if token_id is not None else None
        if scatter is None:
            ctx.notes.append("no video tokens scattered in this graph")
            return 0
        embeds, mask, features = scatter.args[:3]
        batch, length, _ = shape_of(scatter)
        feature_shape = shape_of(features)
        if feature_shape is None or len(feature_shape) != 2 or feature_shape[0] % batch:
            raise RewriteError(f"video features of shape {feature_shape} do not split over batch {batch}")
        span = feature_shape[0] // batch
        per_frame = ctx.layout.tokens_per_frame(ctx.model_config)
        pass_through = ctx.layout.pass_through_tokens
        frames, rest = divmod(span - pass_through, per_frame)
        if rest or frames < 1:
            raise RewriteError(f"{span} video tokens per row are not frames x {per_frame} + {pass_through}")
        if ctx.config.budget != "exact":
            raise RewriteError("budget='reference' has a data-dependent token count; the compiled path needs "
                               "budget='exact' (use holitom_fx.ops.outer_merge eagerly for the reference)")
        merged = exact_budget(frames, per_frame, ctx.config.retain_ratio) + pass_through
        saliency = self._saliency(graph, features, (batch * frames, per_frame))

        with graph.inserting_after(scatter):
            stage = mark_inserted(graph.call_function(
                outer_stage, (scatter, mask, features, frames, per_frame, pass_through, astuple(ctx.config),
                              *saliency)))
        outputs = []
        previous = stage
        for index in range(4):
            with graph.inserting_after(previous):
                previous = mark_inserted(graph.call_function(operator.getitem, (stage, index)))
            outputs.append(previous)
        spliced = outputs[0]
        scatter.replace_all_uses_with(spliced, delete_user_cb=lambda user: user is not stage)
        # The segments leave the graph through a buffer the backend owns (an input mutation).
        segments_buffer = _add_placeholder(graph, WINDOW_END)
        with graph.inserting_after(previous):
            previous = mark_inserted(graph.call_method("copy_", (segments_buffer, outputs[3])))
        previous.meta["holitom_side_effect"] = True
        ctx.extra_inputs.append(WINDOW_END)
        ctx.video = VideoSite(
            scatter=scatter, batch=batch, length=length, frames=frames, tokens_per_frame=per_frame,
            pass_through=pass_through, merged_tokens=merged, new_length=length - span + merged,
            source=outputs[1], span_start=outputs[2], window_end=outputs[3], last_inserted=previous)
        return 1

    def _saliency(self, graph: fx.Graph, features: fx.Node, shape: tuple[int, int]) -> tuple[fx.Node, ...]:
        """Arguments ranking the dynamic tokens: the in-graph vision saliency of the encoder call that
        produced ``features``; else runtime inputs the backend fills from the graph that encoded the
        video, or marks invalid (feature-norm fallback)."""
        ctx = self.ctx
        upstream = _ancestors(features) if ctx.saliency_candidates else set()
        in_graph = [n for n, (anchor, n_shape) in ctx.saliency_candidates.items() if anchor in upstream and n_shape == shape]
        if len(in_graph) == 1:
            ctx.saliency_in_graph = True
            return (in_graph[0],)
        ctx.extra_inputs += [SALIENCY, SALIENCY_VALID]
        return _add_placeholder(graph, SALIENCY), _add_placeholder(graph, SALIENCY_VALID)
