"""SequenceLengthPass: make everything after the boundary agree with the shortened sequence.

Dynamo traces with static shapes, so the sequence length L is baked into literals
(``view(1, L, -1, 16)``, ``arange(L)``, mask sizes). After the outer stage the prefill runs
on L' tokens, and layers K.. on L'': this pass rewrites those literals, narrows the
sequence-shaped graph inputs (position ids, attention mask, cache position) to L', and,
for ``positions="original"``, feeds rotary embeddings each token's original position
while every other consumer (mask building, packed-sequence detection) sees contiguous
positions, so no gap is ever read as a sequence boundary.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx

from .context import GraphContext, RewriteError, is_weight, mark_inserted, shape_of
from .dataflow import ROTARY_TARGETS

_PAD_TARGETS = (torch.nn.functional.pad, torch._C._nn.pad, torch.constant_pad_nd)
_MAX_TOP_K = 16  # arange(k * L) after the boundary, k <= this, is read as k entries per token
_CLAMPS = (torch.clamp, torch.clip, torch.clamp_max, "clamp", "clip", "clamp_max", "clamp_", "clip_", "clamp_max_")
_SCALAR_COMPARISONS = (operator.eq, operator.ne, operator.ge, operator.gt, operator.le, operator.lt)


def _replace_int(value, old: int, new: int):
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value == old:
        return new
    if isinstance(value, (tuple, list)):
        return type(value)(_replace_int(v, old, new) for v in value)
    if isinstance(value, slice):
        return slice(*(_replace_int(v, old, new) for v in (value.start, value.stop, value.step)))
    if isinstance(value, dict):
        return {k: _replace_int(v, old, new) for k, v in value.items()}
    return value


def _gather_positions(positions: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Original position of each kept token: ``positions[..., b, source[b, j]]`` (``[B, L]`` ids, or
    M-RoPE's ``[R, B, L]``)."""
    leading = positions.shape[:-2]
    return positions.expand(*leading, *source.shape[:1], -1).gather(-1, source.expand(*leading, *source.shape))


def _gather_tokens_of(values: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """``values[b, source[b, j], ...]``: each token's value of the original token it stands for."""
    index = source.reshape(*source.shape, *[1] * (values.dim() - 2)).expand(*source.shape, *values.shape[2:])
    return values.gather(1, index)


def _resized_clamp(node: fx.Node, old: int, new: int) -> tuple[tuple, dict] | None:
    """``clamp(x, min, L - 1)``: an index clamped into the sequence (``safe = idx.clamp(0, seq_len - 1)`` before a
    gather along it) is clamped into the shortened one; None where the upper bound is not ``L - 1``."""
    args, kwargs = list(node.args), dict(node.kwargs)
    upper_at = 0 if node.target in (torch.clamp_max, "clamp_max", "clamp_max_") else 1
    if "max" in kwargs and kwargs["max"] == old - 1 and not isinstance(kwargs["max"], bool):
        kwargs["max"] = new - 1
    elif len(args) > upper_at + 1 and args[upper_at + 1] == old - 1 and not isinstance(args[upper_at + 1], bool):
        args[upper_at + 1] = new - 1
    else:
        return None
    return tuple(args), kwargs


def _resized_pad(node: fx.Node, old: int, new: int) -> tuple | None:
    """New pad amounts of a pad along the sequence, or None to keep them. A pad computed from the
    sequence length keeps its output length: a pure right pad of the sequence to a whole number of chunks
    (linear attention's chunked scan: the unrolled loop over chunks stays as traced; padded tokens are
    zeros the model slices off; a pad of 0 too, when L was a whole number of chunks) and a negative pad
    keeping the last k tokens (a conv state). A positive left pad is context of a fixed size and stays;
    a pad that also pads another dim is not the sequence's and stays."""
    shape = shape_of(node.args[0]) if node.args and isinstance(node.args[0], fx.Node) else None
    pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
    if shape is None or not isinstance(pad, (tuple, list)):
        return None
    original, pad = tuple(pad), list(pad)
    for pair, dim in enumerate(range(len(shape) - 1, -1, -1)):
        if shape[dim] != old or 2 * pair + 1 >= len(pad):
            continue
        left, right = pad[2 * pair], pad[2 * pair + 1]
        others = [v for i, v in enumerate(pad) if i not in (2 * pair, 2 * pair + 1)]
        if left < 0:
            pad[2 * pair] += old - new
        elif left == 0 and right >= 0 and not any(others):  # a pure right pad of the sequence, 0 included
            pad[2 * pair + 1] += old - new  # (a chunk pad is 0 when L is a whole number of chunks)
    return tuple(pad) if tuple(pad) != original else None


class SequenceLengthPass:
    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    @staticmethod
    def _resize_visual_count_checks(after: list[fx.Node], video) -> int:
        """Dynamo's runtime asserts on a data-dependent size after the boundary (Qwen3-VL indexes the
        hidden state with the visual mask: ``u1 == 32`` visual tokens) now hold for the merged count."""
        old = video.batch * video.videos * (video.tokens_in + video.pass_through)
        new = video.batch * video.videos * video.merged_tokens
        rewrites = 0
        for node in after:
            if node.target in _SCALAR_COMPARISONS and any(
                    isinstance(tensor, torch.SymInt) for tensor in (a.meta.get("val", a.meta.get("example_value"))
                                                                    for a in node.all_input_nodes)):
                args = _replace_int(node.args, old, new)
                if args != node.args:
                    node.args = args
                    rewrites += 1
        return rewrites

    @staticmethod
    def _gather_unchanged(graph: fx.Graph, after: list[fx.Node], resized: set[fx.Node], old: int, video) -> int:
        """A ``[B, L, ...]`` tensor computed after the boundary from what precedes it alone (Qwen3-VL's
        visual position mask, sliced from the video mask) still has the original length: every token
        takes the value of the original token it stands for (``source``)."""
        changed = set(resized)  # and whatever reads a rewritten node
        rewrites = 0
        for node in after:
            if node in changed or node.meta.get("holitom") or node.op == "output" or any(
                    a in changed or a.meta.get("holitom") for a in node.all_input_nodes):
                changed.add(node)
                continue
            shape = shape_of(node)
            if shape is None or len(shape) < 2 or shape[:2] != (video.batch, old) or is_weight(node) \
                    or node.op == "placeholder":
                continue
            with graph.inserting_after(node):
                gathered = mark_inserted(graph.call_function(_gather_tokens_of, (node, video.source)))
            node.replace_all_uses_with(gathered, delete_user_cb=lambda user: user is not gathered)
            changed.add(gathered)
            rewrites += 1
        return rewrites

    @staticmethod
    def _gather_read_after(graph: fx.Graph, before: list[fx.Node], after: set[fx.Node], old: int, video) -> int:
        """A ``[B, L, ...]`` tensor made before the boundary and read after it (Gemma 4's per-layer inputs,
        looked up from the token ids): its readers after the boundary take each token's value of the original
        token it stands for (``source``)."""
        rewrites = 0
        for node in before:
            shape = shape_of(node)
            if node.op == "placeholder" or node.meta.get("holitom") or is_weight(node) or node is video.scatter \
                    or shape is None or len(shape) < 2 or shape[:2] != (video.batch, old):
                continue
            readers = [u for u in node.users if u in after and not u.meta.get("holitom") and u.op != "output"]
            if not readers:
                continue
            with graph.inserting_after(video.last_inserted):
                gathered = mark_inserted(graph.call_function(_gather_tokens_of, (node, video.source)))
            for reader in readers:
                reader.replace_input_with(node, gathered)
            rewrites += 1
        return rewrites

    def __call__(self, graph: fx.Graph) -> int:
        video = self.ctx.video
        if video is None:
            return 0
        old = video.length
        inner = self.ctx.inner
        view = self.ctx.view
        inner_region = set(inner.outputs).union(*(view.descendants(n) for n in inner.outputs)) if inner else set()
        if inner:  # and what layers K.. make from no input (an MoE layer's arange(k * L))
            inner_region |= {n for n in graph.nodes
                             if view.layers.decoder.get(n, -1) >= inner.layer}
        nodes = list(graph.nodes)
        after = nodes[nodes.index(video.last_inserted) + 1:]
        rewrites = 0
        resized: set[fx.Node] = set()
        for node in after:
            if node.meta.get("holitom") or node.op == "output":
                continue
            new = inner.new_length if node in inner_region else video.new_length
            args, kwargs = _replace_int(node.args, old, new), _replace_int(node.kwargs, old, new)
            pad = _resized_pad(node, old, new) if node.target in _PAD_TARGETS else None
            if pad is not None:
                args = (args[0], pad, *args[2:]) if len(args) > 1 else args
                kwargs = {**kwargs, "pad": pad} if "pad" in kwargs else kwargs
            clamp = _resized_clamp(node, old, new) if node.target in _CLAMPS else None
            if clamp is not None:
                args, kwargs = clamp
            if node.target is torch.arange and args == node.args:  # a range over token-expert pairs (MoE top-k)
                for multiple in range(2, _MAX_TOP_K + 1):
                    args = _replace_int(args, multiple * old, multiple * new)
            if args != node.args or kwargs != node.kwargs:
                node.args, node.kwargs = args, kwargs
                resized.add(node)
                rewrites += 1

        after_set = set(after)
        original_applied = False
        for placeholder in [n for n in nodes if n.op == "placeholder"]:
            shape = shape_of(placeholder)
            if shape is None or old not in shape or placeholder is video.scatter or is_weight(placeholder):
                continue
            users = [u for u in placeholder.users if u in after_set and not u.meta.get("holitom")]
            if not users:
                continue
            with graph.inserting_after(video.last_inserted):
                narrowed = placeholder
                for dim, size in enumerate(shape):
                    if size == old:
                        narrowed = mark_inserted(graph.call_method("narrow", (narrowed, dim, 0, video.new_length)))
                rotary = None
                dtype = placeholder.meta.get("val", placeholder.meta.get("example_value")).dtype
                # integer ids; or float M-RoPE ids [3 or 4, B, L] (Qwen3-Omni's thinker numbers them as floats)
                ids = dtype in (torch.int32, torch.int64) or (dtype.is_floating_point and len(shape) == 3
                                                              and shape[0] in (3, 4))
                if self.ctx.positions == "original" and ids and len(shape) >= 2 and shape[-1] == old:
                    rotary = mark_inserted(graph.call_function(_gather_positions, (placeholder, video.source)))
            for user in users:
                replacement = rotary if rotary is not None and any(
                    n.target in ROTARY_TARGETS for n in view.descendants(user)) else narrowed
                original_applied |= replacement is rotary
                user.replace_input_with(placeholder, replacement)
                rewrites += 1
        rewrites += self._gather_read_after(graph, nodes[:nodes.index(video.last_inserted)], after_set, old, video)
        rewrites += self._gather_unchanged(graph, after, resized, old, video)
        rewrites += self._resize_visual_count_checks(after, video)
        if self.ctx.positions == "original" and not original_applied and not self.ctx.derived_positions:
            raise RewriteError("positions='original': no position ids reach a position encoding in this graph, "
                               "neither as an input nor derived with arange after the boundary")
        return rewrites
