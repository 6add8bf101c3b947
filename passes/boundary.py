"""The vision-token boundary: where a graph places video features into the text embeddings.

Found by anchor op and a local walk. Each placement style is one small recognizer that names
the operands of its anchor; a boundary counts only when its mask derives from
``input_ids == video_token_id`` (image scatters use another id and are left alone).

* ``embeds.masked_scatter(mask, features)`` (transformers' video LLMs today);
* ``embeds.index_put((mask,), features)``;
* ``embeds[mask] = features`` (in place: later reads of ``embeds`` see the video);
* ``torch.where(mask, placed, embeds)`` with ``placed`` gathered from the features.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import torch
import torch.fx as fx

from .context import RewriteError, shape_of

_EQ_TARGETS = (operator.eq, torch.eq, "eq", "__eq__", torch.Tensor.eq)


@dataclass(frozen=True)
class Boundary:
    anchor: fx.Node  # the placing op; the merge goes right after it
    sequence: fx.Node  # the tensor holding the placed sequence [B, L, E] after the anchor
    mask: fx.Node  # [B, L] or [B, L, 1 or E], true at video placeholders
    features: fx.Node  # the video features, B*V rows of E (or the same values flat)
    in_place: bool  # the anchor mutated ``sequence``: only its later uses read the video

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
    return Boundary(node, node, node.args[1], node.args[2], in_place=False)


def _index_put(node: fx.Node) -> Boundary | None:
    if not _call(node, "index_put", torch.index_put, torch.Tensor.index_put) or len(node.args[1]) != 1:
        return None
    return Boundary(node, node, node.args[1][0], node.args[2], in_place=False)


def _setitem(node: fx.Node) -> Boundary | None:
    if not _call(node, operator.setitem) or not isinstance(node.args[1], fx.Node):
        return None
    sequence, mask, values = node.args
    return Boundary(node, sequence, mask, values, in_place=True) if isinstance(values, fx.Node) else None


def _where(node: fx.Node) -> Boundary | None:
    if not _call(node, torch.where, "where") or len(node.args) != 3:
        return None
    mask, placed, embeds = node.args
    shape = shape_of(node)
    features = _feature_source(placed, shape) if shape is not None and len(shape) == 3 else None
    return Boundary(node, node, mask, features, in_place=False) if features is not None else None


def _feature_source(placed: fx.Node, shape: tuple[int, ...], depth: int = 6) -> fx.Node | None:
    """The nearest ancestor of ``placed`` shaped like features: ``[n, E]`` or ``[B, V, E]`` with V != L."""
    batch, length, dim = shape
    frontier = [placed]
    for _ in range(depth):
        frontier = [a for n in frontier for a in n.all_input_nodes]
        for node in frontier:
            candidate = shape_of(node)
            if candidate is None or candidate[-1] != dim or node.op == "get_attr":
                continue
            if len(candidate) == 2 or (len(candidate) == 3 and candidate[0] == batch and candidate[1] != length):
                return node
    return None


BOUNDARY_STYLES: tuple[Callable[[fx.Node], Boundary | None], ...] = (_masked_scatter, _index_put, _setitem, _where)


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


def find_video_boundary(graph: fx.Graph, token_id: int) -> Boundary | None:
    """The one place video features enter the sequence, or None; several raise ``RewriteError``."""
    found = []
    for node in graph.nodes:
        for style in BOUNDARY_STYLES:
            boundary = style(node)
            if boundary is not None and isinstance(boundary.mask, fx.Node) and _compares_with(boundary.mask, token_id):
                found.append(boundary)
                break
    if len(found) > 1:
        raise RewriteError(f"{len(found)} video placements in one graph; one video per prompt is supported")
    return found[0] if found else None
