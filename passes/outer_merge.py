"""OuterMergePass: find where video features are scattered into the text embeddings, merge there."""

from __future__ import annotations

import operator
from dataclasses import astuple

import torch
import torch.fx as fx

from holitom_fx.archs import infer_saliency_grid, spatial_merge
from holitom_fx.ops import exact_budget, span_mask
from holitom_fx.ops.stages import outer_stage

from .boundary import find_video_boundary
from .vision_saliency import insert_pooling
from .context import (SALIENCY, SALIENCY_VALID, WINDOW_END, GridCheck, GraphContext, RewriteError, VideoSite,
                      is_weight, mark_inserted, shape_of)
from .frame_grid import GridError, encoded_frame_grid, rope_frame_grid, span_frame_grid
from .dataflow import DataflowView, is_floating, is_integer
from .module_stack import module_path

def known_video_ids(ctx: GraphContext) -> tuple[tuple[int, ...], bool]:
    """(ids known to mark video placeholders, whether the user set them): ``HoliTomConfig.video_token_id``
    settles it; else a model config's video token (knowledge that breaks ties, never a precondition)."""
    if ctx.config.video_token_id is not None:
        return (ctx.config.video_token_id,), True
    known = ctx.layout.video_token_id(ctx.model_config) if ctx.model_config is not None else None
    return ((known,) if known is not None else ()), False


def video_placement(view: DataflowView, ctx: GraphContext) -> str | None:
    """How the graph places video features, if it does (the outer pass would rewrite it): ``"cat"`` for a
    concatenation (its sizes may hang on a split point read with ``.item()``), else ``"scatter"``."""
    try:
        boundary = find_video_boundary(view, *known_video_ids(ctx))
    except RewriteError:  # more than one: the outer pass says why
        return "scatter"
    return None if boundary is None else "cat" if boundary.pieces else "scatter"


def _rope_positions(graph: fx.Graph, batch: int, length: int) -> fx.Node | None:
    """The graph's M-RoPE position ids input ``[3 or 4, B, L]``, if it takes one: integers, or floats
    (Qwen3-Omni's thinker numbers them as floats: its temporal row scales with seconds per frame)."""
    found = [n for n in graph.nodes if n.op == "placeholder" and not is_weight(n) and (is_integer(n) or is_floating(n))
             and shape_of(n) is not None and len(shape_of(n)) == 3 and shape_of(n)[0] in (3, 4)
             and shape_of(n)[1:] == (batch, length)]
    return found[0] if len(found) == 1 else None


def _add_placeholder(graph: fx.Graph, name: str) -> fx.Node:
    last = [n for n in graph.nodes if n.op == "placeholder"][-1]
    with graph.inserting_after(last):
        return mark_inserted(graph.placeholder(name))


def _graph_break_note(reason: str | None) -> str:
    """Why the graph that scatters the video runs no decoder layer: Dynamo's own reason for ending it where it
    has one. A branch on a data-dependent size cannot be captured by any Dynamo setting (it would have to guard
    on data), so that is said; a data-dependent output shape can be (``capture_dynamic_output_shape_ops``)."""
    note = "no decoder layer runs in the graph that scatters the video (a graph break after the boundary"
    note += f": {reason})" if reason else ")"
    if reason and "data-dependent expression" in reason:
        note += ("; the model branches on a data-dependent size there, which Dynamo cannot capture in one graph "
                 "(no Dynamo setting does): the prefill's later graphs would read the merged sequence beside the "
                 "model's own full-length masks and positions, so it is left unmerged")
    elif not torch._dynamo.config.capture_dynamic_output_shape_ops:
        note += ("; set torch._dynamo.config.capture_dynamic_output_shape_ops=True (a HoliTom backend sets it when "
                 "created): a boolean-mask index after the boundary breaks the graph without it")
    return note


class OuterMergePass:
    """Insert ``outer_stage`` right after the video boundary and reroute every later read of the sequence."""

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        known, explicit = known_video_ids(ctx)
        boundary = find_video_boundary(ctx.view, known, explicit)
        if boundary is None:
            ctx.notes.append("no video in this call")
            return 0
        scatter, sequence, mask, features = boundary.anchor, boundary.sequence, boundary.mask, boundary.features
        token_id = next((i for i in boundary.token_ids if i in known), boundary.token_ids[0])
        if any(module_path(n) for n in graph.nodes) and not any(
                ctx.view.order[n] > ctx.view.order[scatter] for n in ctx.view.layers.decoder):
            # A model's graph ending soon after the boundary (a graph break): later graphs would read a
            # shortened sequence next to the model's own full-length positions and masks.
            ctx.notes.append(_graph_break_note(ctx.graph_break))
            return 0
        if shape_of(sequence) is None or len(shape_of(sequence)) != 3 or shape_of(features) is None:
            raise RewriteError(f"the sequence at {scatter.name} is not [B, L, E] with static shapes")
        if mask is None:  # concatenated in: the features' span is the mask
            with graph.inserting_after(scatter):
                mask = mark_inserted(graph.call_function(
                    span_mask, (sequence, boundary.span_start, boundary.span[1])))
        place_after = mask if boundary.mask is None else scatter
        ids_reader = boundary.mask if boundary.mask is not None else scatter  # what the view knows descends from ids
        length, dim = shape_of(sequence)[1:]
        batch, row_span = boundary.span
        layout = ctx.layout
        positions = _rope_positions(graph, batch, length)
        rope = layout.rotary_axes == 3 or (layout.rotary_axes is None and positions is not None)
        grid_check, frame_spans = None, False
        if rope:
            grid_check = self._rope_grid(positions, ids_reader, token_id, batch, length)
            videos, frames, per_frame, frame_spans = self._rope_layout(grid_check, row_span)
            pass_through, span = 0, row_span // videos
        else:
            videos = self._videos_per_row(features, batch, row_span, dim)
            span = row_span // videos
            try:
                frames, per_frame, pass_through = self._frame_grid(features, batch, span, dim)
            except RewriteError as no_frames:  # the ids may still show frames as spans of their own
                try:
                    grid_check = self._span_grid(ids_reader, token_id, batch, length, no_frames)
                except RewriteError as no_spans:  # or the grid the video was encoded with gives them
                    grid_check = self._encoded_grid(ids_reader, token_id, batch, length, no_spans)
                videos, frames, per_frame, frame_spans = self._rope_layout(grid_check, row_span)
                pass_through, span = 0, row_span // videos
        if ctx.config.budget != "exact":
            raise RewriteError("budget='reference' has a data-dependent token count; the compiled path needs "
                               "budget='exact' (use holitom_fx.ops.outer_merge eagerly for the reference)")
        merged = exact_budget(frames, per_frame, ctx.config.retain_ratio) + pass_through
        saliency = self._saliency(graph, features, (batch * videos * frames, per_frame))
        carries = layout.carries_visual_features if layout.carries_visual_features is not None else rope
        carried = self._carried(ctx.view, scatter, features) if carries else []

        with graph.inserting_after(place_after):
            stage = mark_inserted(graph.call_function(
                outer_stage, (sequence, mask, features, frames, per_frame, pass_through, astuple(ctx.config),
                              *saliency), {"videos": videos, "frame_spans": frame_spans,
                                           "carried": tuple(carried)}))
        order = {node: index for index, node in enumerate(graph.nodes)}
        late = {a for node in carried for a in ctx.view.ancestors(node) | {node} if order[a] > order[stage]}
        for node in sorted(late, key=order.get):  # made after the boundary from what precedes it: moved up
            stage.prepend(node)
        outputs = []
        previous = stage
        for index in range(5):
            with graph.inserting_after(previous):
                previous = mark_inserted(graph.call_function(operator.getitem, (stage, index)))
            outputs.append(previous)
        for index, tensor in enumerate(carried):  # later reads see the carried features merged
            with graph.inserting_after(previous):
                previous = mark_inserted(graph.call_function(operator.getitem, (outputs[4], index)))
            tensor.replace_all_uses_with(previous, delete_user_cb=lambda user: user is not stage)
        spliced = outputs[0]
        order = {node: index for index, node in enumerate(graph.nodes)}
        sequence.replace_all_uses_with(spliced, delete_user_cb=lambda user: user is not stage and user is not mask and (
            not boundary.in_place or order[user] > order[scatter]))
        # The segments leave the graph through a buffer the backend owns (an input mutation).
        segments_buffer = _add_placeholder(graph, WINDOW_END)
        with graph.inserting_after(previous):
            previous = mark_inserted(graph.call_method("copy_", (segments_buffer, outputs[3])))
        ctx.extra_inputs.append(WINDOW_END)
        ctx.video = VideoSite(
            scatter=scatter, batch=batch, length=length, frames=frames, tokens_per_frame=per_frame,
            pass_through=pass_through, merged_tokens=merged, new_length=length - videos * (span - merged),
            source=outputs[1], span_start=outputs[2], window_end=outputs[3], last_inserted=previous, videos=videos,
            grid_check=grid_check, frame_spans=frame_spans)
        return 1

    def _rope_layout(self, grid_check: GridCheck, row_span: int) -> tuple[int, int, int, bool]:
        """(videos per row, frames, tokens per frame, frames as spans) from an M-RoPE grid: spans of one
        frame each are the frames of one video where the record says so (or, without one, always)."""
        layout = self.ctx.layout
        videos, frames, per_frame = grid_check.grid
        frame_spans = layout.frame_spans if layout.frame_spans is not None else videos > 1 and frames == 1
        if frame_spans:
            if frames != 1:
                raise RewriteError(f"frame spans of {frames} frames each: expected one frame per span")
            videos, frames = 1, videos
        if row_span != videos * frames * per_frame:
            raise RewriteError(f"{row_span} video tokens per row are not {videos} videos of {frames} x {per_frame}")
        return videos, frames, per_frame, frame_spans

    @staticmethod
    def _carried(view: DataflowView, scatter: fx.Node, features: fx.Node) -> list[fx.Node]:
        """Tensors with one row per video feature, read after the boundary but not made from the features
        (Qwen3-VL's deepstack features): merged along with them."""
        order = {node: index for index, node in enumerate(scatter.graph.nodes)}
        rows = shape_of(features)[0] if len(shape_of(features)) == 2 else None
        found = []
        for node in scatter.graph.nodes:
            shape = shape_of(node)
            if node is features or rows is None or shape is None or len(shape) != 2 or shape[0] != rows \
                    or is_weight(node) or view.reaches(features, node):
                continue
            if any(order[user] > order[scatter] for user in node.users) and all(
                    order[user] > order[scatter] for user in node.users):
                found.append(node)
        # the last step of each chain (a cat of per-video placeholders, not the placeholders too)
        return [node for node in found if not any(view.reaches(node, other) for other in found if other is not node)]

    def _ids_input(self, mask: fx.Node, batch: int, length: int) -> list[fx.Node]:
        return [n for n in self.ctx.view.ancestors(mask) if n.op == "placeholder" and is_integer(n)
                and shape_of(n) == (batch, length)]

    def _span_grid(self, mask: fx.Node, token_id: int, batch: int, length: int, why: RewriteError) -> GridCheck:
        """Frames as spans of their own, read from the real ids of this call (``frame_grid``), re-read per call."""
        ids = self._ids_input(mask, batch, length)
        values = self.ctx.example_values.get(ids[0].name) if len(ids) == 1 else None
        if values is None:
            raise why
        try:
            grid = span_frame_grid(values, token_id)
        except GridError as err:
            raise RewriteError(f"{why}; {err}") from err
        return GridCheck(input_ids=ids[0].name, positions=None, token_id=token_id, grid=grid)

    def _encoded_grid(self, mask: fx.Node, token_id: int, batch: int, length: int, why: RewriteError) -> GridCheck:
        """Each flat span as t frames of (h/m)*(w/m) tokens, from the grid (t, h, w) the video encoder was last
        called with (``GraphContext.encoded_grid``, ``frame_grid.encoded_frame_grid``), re-read per call."""
        ctx = self.ctx
        ids = self._ids_input(mask, batch, length)
        values = ctx.example_values.get(ids[0].name) if len(ids) == 1 else None
        if values is None:
            raise why
        if ctx.encoded_grid is None:
            raise RewriteError(f"{why}; no video grid (t, h, w) kept from an encoder call (a backend bound to the "
                               "model keeps the grid its encoder is called with: HoliTomBackend.bind)")
        merge = spatial_merge(ctx.model_config) if ctx.model_config is not None else None
        try:
            grid = encoded_frame_grid(values, token_id, ctx.encoded_grid, merge)
        except GridError as err:
            raise RewriteError(f"{why}; {err}") from err
        return GridCheck(input_ids=ids[0].name, positions=None, token_id=token_id, grid=grid, encoded=True,
                         merge=merge)

    def _rope_grid(self, positions: fx.Node | None, mask: fx.Node, token_id: int, batch: int,
                   length: int) -> GridCheck:
        """The frame grid of an M-RoPE model, read from the real position ids of this call (``frame_grid``)."""
        ctx = self.ctx
        ids = self._ids_input(mask, batch, length)
        if positions is None or len(ids) != 1:
            raise RewriteError("the 3-D rotary position ids are not a graph input (generate() passes them; a "
                               "forward call derives them inside the model): the frame grid is unknown")
        values = [ctx.example_values.get(n.name) for n in (ids[0], positions)]
        if any(v is None for v in values):
            raise RewriteError("no real example inputs to read the frame grid from the position ids")
        try:
            grid = rope_frame_grid(values[0], values[1], token_id)
        except GridError as err:
            raise RewriteError(str(err)) from err
        return GridCheck(input_ids=ids[0].name, positions=positions.name, token_id=token_id, grid=grid)

    def _videos_per_row(self, features: fx.Node, batch: int, row_span: int, dim: int) -> int:
        """Video spans per row: the features' per-video tensor ``[B*k, V, E]`` a few steps up (a record's
        model encodes videos as a batch). Without a record one video per row (its per-frame features
        look the same)."""
        if self.ctx.layout.tokens_per_frame is None:
            return 1
        for node in self.ctx.view.nearest_above(features, 3):
            shape = shape_of(node)
            if shape is not None and len(shape) == 3 and shape[2] == dim and shape[0] % batch == 0 \
                    and shape[0] * shape[1] == batch * row_span:
                return shape[0] // batch
        return 1

    def _frame_grid(self, features: fx.Node, batch: int, span: int, dim: int) -> tuple[int, int, int]:
        """(frames, tokens per frame, pass-through tokens) of each row's video span: from the layout
        record, or, without one, from the per-frame features ``[B*T, N, E]`` the span was flattened from."""
        layout = self.ctx.layout
        if layout.tokens_per_frame is not None:
            per_frame, pass_through = layout.tokens_per_frame(self.ctx.model_config), layout.pass_through_tokens
            frames, rest = divmod(span - pass_through, per_frame)
            if rest or frames < 1:
                raise RewriteError(f"{span} video tokens per row are not frames x {per_frame} + {pass_through}")
            return frames, per_frame, pass_through
        for node in self.ctx.view.nearest_above(features, 7):
            shape = shape_of(node)
            if shape is not None and len(shape) == 3 and shape[2] == dim and shape[0] % batch == 0 \
                    and shape[0] > batch and (shape[0] // batch) * shape[1] <= span:
                frames = shape[0] // batch
                return frames, shape[1], span - frames * shape[1]
        raise RewriteError(f"the frames of the video span ({span} tokens) are not in this graph: no layout record, "
                           "no per-frame features [B*T, N, E] above the boundary, no 3-D rotary positions")

    def _saliency(self, graph: fx.Graph, features: fx.Node, shape: tuple[int, int]) -> tuple[fx.Node, ...]:
        """Arguments ranking the dynamic tokens: the in-graph vision saliency of the encoder call that
        produced ``features`` (pooled to the frame grid here when no record said how); else runtime
        inputs the backend fills from the graph that encoded the video, or marks invalid (feature-norm
        fallback)."""
        ctx = self.ctx
        upstream = ctx.view.ancestors(features) | {features} if ctx.saliency_candidates else set()
        in_graph = [(n, found) for n, found in ctx.saliency_candidates.items() if found.anchor in upstream
                    and found.frames == shape[0] and (found.tokens == shape[1] or not found.pooled)]
        last_layer = max((found.layer for _, found in in_graph), default=None)
        in_graph = [(n, found) for n, found in in_graph if found.layer == last_layer]  # the layer feeding them
        ready = len(in_graph) == 1 and in_graph[0][1].tokens == shape[1]  # pooled, or the model does not pool
        grid = infer_saliency_grid(in_graph[0][1].tokens, shape[1]) if len(in_graph) == 1 and not ready else None
        if ready or grid is not None:
            saliency = in_graph[0][0]
            return (saliency if ready else insert_pooling(graph, saliency, grid),)
        ctx.extra_inputs += [SALIENCY, SALIENCY_VALID]
        return _add_placeholder(graph, SALIENCY), _add_placeholder(graph, SALIENCY_VALID)
