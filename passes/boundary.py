"""The vision-token boundary: where a graph places video features into the text embeddings.

Found by dataflow (``passes.dataflow``), not by a config: a placing op (one small recognizer per
style names its operands) whose mask derives from ``ids == c`` on an integer graph input, and whose
features descend from a floating graph input (the pixels, or features encoded before the graph) that
the embeddings do not descend from. The placeholder id ``c`` is read off the graph.

* ``embeds.masked_scatter(mask, features)`` (transformers' video LLMs today);
* ``embeds.index_put((mask,), features)``;
* ``embeds[mask] = features`` (in place: later reads of ``embeds`` see the video);
* ``torch.where(mask, placed, embeds)`` with ``placed`` gathered from the features;
* ``torch.cat([embeds[:, :p], features, embeds[:, p + 1:]], dim=1)`` around one placeholder, ``p`` read
  off ``ids == c`` (the graph is specialized per ``p`` first: ``passes.specialize``). No mask exists
  there: the outer pass makes one for the features' span (``ops.span_mask``).

Several candidates (an image and a video): the one whose placeholder id is the known video token
(``HoliTomConfig.video_token_id``, else the model config's), else the one fed by a video input
(``pixel_values_videos``, a ``video`` encoder output), else the only one.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.fx as fx

from .context import RewriteError, is_weight, shape_of, tensor_of
from .dataflow import DataflowView, is_floating, is_integer

_EQ_TARGETS = (operator.eq, torch.eq, "eq", "__eq__", torch.Tensor.eq)
_WHERE_TARGETS = (torch.where, "where")


@dataclass(frozen=True)
class Boundary:
    anchor: fx.Node  # the placing op; the merge goes right after it
    sequence: fx.Node  # the tensor holding the placed sequence [B, L, E] after the anchor
    mask: fx.Node  # [B, L] or [B, L, 1 or E], true at video placeholders
    features: fx.Node  # the video features, B*V rows of E (or the same values flat)
    in_place: bool  # the anchor mutated ``sequence``: only its later uses read the video
    embeds: fx.Node | None = None  # the sequence before the placement
    token_ids: tuple[int, ...] = ()  # the placeholder ids the mask compares with
    video_input: bool = False  # the features descend from an input named as a video's
    pieces: tuple[fx.Node, ...] = ()  # a ``cat`` boundary's operands, the features among them

    @property
    def span_start(self) -> int:
        """Where a ``cat`` boundary's features start in the sequence (static after specialization)."""
        before = self.pieces[:self.pieces.index(self.features)]
        return sum(shape_of(piece)[1] for piece in before)

    @property
    def span(self) -> tuple[int, int]:
        """(batch, video tokens per row) from the static shapes."""
        batch, _, dim = shape_of(self.sequence)
        values = math.prod(shape_of(self.features))  # features may come flat (LLaVA-NeXT-Video)
        if values % (batch * dim):
            raise RewriteError(f"video features of shape {shape_of(self.features)} do not split over batch {batch}")
        return batch, values // (batch * dim)


def _call(node: fx.Node, *targets) -> bool:
    return node.op in ("call_method", "call_function") and node.target in targets


def _masked_scatter(node: fx.Node) -> Boundary | None:
    if not _call(node, "masked_scatter", torch.Tensor.masked_scatter, torch.masked_scatter):
        return None
    return Boundary(node, node, node.args[1], node.args[2], in_place=False, embeds=node.args[0])


def _index_put(node: fx.Node) -> Boundary | None:
    if not _call(node, "index_put", torch.index_put, torch.Tensor.index_put) or len(node.args[1]) != 1:
        return None
    return Boundary(node, node, node.args[1][0], node.args[2], in_place=False, embeds=node.args[0])


def _setitem(node: fx.Node) -> Boundary | None:
    if not _call(node, operator.setitem) or not isinstance(node.args[1], fx.Node):
        return None
    sequence, mask, values = node.args
    return Boundary(node, sequence, mask, values, in_place=True, embeds=sequence) if isinstance(values, fx.Node) \
        else None


def _where(node: fx.Node) -> Boundary | None:
    if not _call(node, *_WHERE_TARGETS) or len(node.args) != 3 or not all(isinstance(a, fx.Node) for a in node.args):
        return None
    mask, placed, embeds = node.args
    return Boundary(node, node, mask, placed, in_place=False, embeds=embeds)


def _cat(node: fx.Node) -> Boundary | None:
    if not _call(node, torch.cat, "cat") or not node.args or not isinstance(node.args[0], (list, tuple)):
        return None
    pieces = tuple(node.args[0])
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    values = [tensor_of(piece) for piece in pieces]  # sizes may still be symbolic (before specialization)
    if len(pieces) < 2 or dim not in (1, -2) or any(value is None or value.dim() != 3 for value in values):
        return None
    return Boundary(node, node, None, None, in_place=False, pieces=pieces)


BOUNDARY_STYLES: tuple[Callable[[fx.Node], Boundary | None], ...] = (_masked_scatter, _index_put, _setitem, _where,
                                                                     _cat)


def _feature_source(view: DataflowView, boundary: Boundary, outside: frozenset[fx.Node]) -> fx.Node | None:
    """The placed values, or for ``where`` the nearest tensor above them shaped like features (``[n, E]``,
    or ``[B, V, E]`` with V != L) that descends from no token ids nor the embeddings."""
    values = boundary.features
    if boundary.anchor.target not in _WHERE_TARGETS:
        return values
    shape = shape_of(boundary.anchor)
    if shape is None or len(shape) != 3:
        return None
    batch, length, dim = shape
    for node in sorted(view.ancestors(values) | {values}, key=view.order.get, reverse=True):
        candidate = shape_of(node)
        if candidate is None or candidate[-1] != dim or is_weight(node) or node in outside:
            continue
        if len(candidate) == 2 or (len(candidate) == 3 and candidate[0] == batch and candidate[1] != length):
            return node
    return None


def _compared_ids(view: DataflowView, mask: fx.Node) -> tuple[int, ...]:
    """The constants ``c`` of every ``x == c`` above the mask, ``x`` an integer input or its descendant."""
    found = []
    for node in sorted(view.ancestors(mask) | {mask}, key=view.order.get):
        if node.target not in _EQ_TARGETS or len(node.args) != 2:
            continue
        tensor, constant = node.args if isinstance(node.args[1], int) else node.args[::-1]
        if isinstance(constant, int) and not isinstance(constant, bool) and isinstance(tensor, fx.Node) and any(
                is_integer(x) for x in [*view.inputs_of(tensor), tensor]):
            found.append(constant)
    return tuple(dict.fromkeys(found))


def _cat_candidate(view: DataflowView, boundary: Boundary) -> Boundary | None:
    """A ``cat`` places visual features when exactly one operand descends from floating inputs that no
    other operand reads, and the split derives from ``ids == c``."""
    token_ids = _compared_ids(view, boundary.anchor)
    if not token_ids:
        return None
    inputs = {piece: {x for x in [*view.inputs_of(piece), piece] if x.op == "placeholder"} for piece in boundary.pieces}
    visual = [piece for piece in boundary.pieces if is_floating(piece) and any(
        is_floating(x) and all(x not in inputs[other] for other in boundary.pieces if other is not piece)
        for x in inputs[piece])]
    if len(visual) != 1:
        return None
    video = any("video" in x.name.lower() for x in inputs[visual[0]])
    embeds = next(piece for piece in boundary.pieces if piece is not visual[0])
    return replace(boundary, features=visual[0], embeds=embeds, token_ids=token_ids, video_input=video)


def _candidate(view: DataflowView, boundary: Boundary) -> Boundary | None:
    """The boundary with its ids and features read off the dataflow, or None when it places no visual input."""
    if boundary.pieces:
        return _cat_candidate(view, boundary)
    if not isinstance(boundary.mask, fx.Node) or not isinstance(boundary.embeds, fx.Node):
        return None
    token_ids = _compared_ids(view, boundary.mask)
    if not token_ids:
        return None
    embeds_inputs = frozenset([*view.inputs_of(boundary.embeds), boundary.embeds])
    outside = frozenset(view.ancestors(boundary.embeds) | {boundary.embeds}).union(
        *(view.descendants(x) for x in view.inputs_of(boundary.mask) if is_integer(x)))
    features = _feature_source(view, boundary, outside)
    if features is None or not is_floating(features):
        return None
    visual_inputs = [x for x in [*view.inputs_of(features), features] if x.op == "placeholder" and is_floating(x)
                     and x not in embeds_inputs]
    if not visual_inputs:
        return None
    video = any("video" in x.name.lower() for x in visual_inputs)
    return replace(boundary, features=features, token_ids=token_ids, video_input=video)


def find_boundaries(view: DataflowView) -> list[Boundary]:
    """Every placement of visual features into the embeddings, in graph order."""
    found = []
    for node in view.graph.nodes:
        for style in BOUNDARY_STYLES:
            boundary = style(node)
            candidate = _candidate(view, boundary) if boundary is not None else None
            if candidate is not None:
                found.append(candidate)
                break
    return found


def select_video(found: list[Boundary], known_ids: tuple[int, ...], explicit: bool) -> list[Boundary]:
    """The placements that are the video's (see the module docstring). ``explicit``: ``known_ids`` came
    from the user's ``HoliTomConfig`` and settle it; otherwise they only break ties."""
    by_id = [b for b in found if set(b.token_ids) & set(known_ids)]
    if by_id or explicit:
        return by_id
    by_input = [b for b in found if b.video_input]
    if by_input:
        return by_input
    if known_ids:  # the model names its video token and no placement uses it: an image, not a video
        return []
    if len(found) > 1:
        ids = sorted({i for b in found for i in b.token_ids})
        raise RewriteError(f"{len(found)} visual placements (placeholder ids {ids}) and nothing says which is the "
                           "video: set HoliTomConfig(video_token_id=...)")
    return found


def find_video_boundary(view: DataflowView, known_ids: tuple[int, ...] = (), explicit: bool = False) \
        -> Boundary | None:
    """The one place video features enter the sequence, or None; several raise ``RewriteError``."""
    found = select_video(find_boundaries(view), known_ids, explicit)
    if len(found) > 1:
        raise RewriteError(f"{len(found)} video placements in one graph; one video per prompt is supported")
    return found[0] if found else None
