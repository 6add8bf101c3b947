"""SlidingWindowPass: merge beside a sliding-window KV cache only where its count cannot go wrong.

transformers' ``DynamicSlidingWindowLayer`` keeps the last ``W - 1`` keys of a layer (a slice of the
graph, ``full_key_states[:, :, -W + 1:, :]``, so it follows the merged length) but counts its tokens in
a Python int, ``cumulative_length += key_states.shape[-2]``. With static shapes that length is a
constant: Dynamo writes the traced length L into the residual bytecode (a ``LOAD_CONST`` before the
``STORE_ATTR``) before the backend ever sees the graph, so after a merged prefill the layer says L while
it holds ``min(L', W - 1)`` keys. The next step sizes its window mask from that count
(``get_mask_sizes``): ``W`` columns once ``L >= W``, else ``L + 1``, against the keys it really has plus
the new one. The two agree, and the mask is the same (all ones: the count and the query offset shift
together), exactly when the merged prompt still fills the window, ``L' >= W - 1``; then every later
step agrees too (both counts stay past the window). Shorter, Dynamo cannot even trace the first decode
step (its fake SDPA call sees a mask of the wrong width).

So this pass reads each window off the graph (the slices that keep the last ``W - 1`` positions of a
``[B, H, S, D]`` tensor the graph returns to its cache) and refuses the merge, said, when a sliding
layer would keep fewer tokens than its window; otherwise the decode graphs need nothing of it.
"""

from __future__ import annotations

import operator

import torch.fx as fx

from .context import GraphContext, RewriteError, shape_of
from .dataflow import is_floating
from .decode_positions import is_sliding_window_cache_input


def has_sliding_layers(model_config) -> bool:
    """The model's config declares sliding-window layers: its cache may be built inside the traced call,
    where no cache input shows it."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    return any("sliding" in str(kind) for kind in getattr(text, "layer_types", None) or ())


def kept_tail(node: fx.Node) -> int | None:
    """``k`` when ``node`` keeps the last ``k`` positions along dim 2 of a floating ``[B, H, S, D]`` tensor
    (``x[:, :, -k:, :]``), else None."""
    if node.op != "call_function" or node.target is not operator.getitem or not is_floating(node):
        return None
    source, index = node.args[0], node.args[1]
    shape = shape_of(source)
    if shape is None or len(shape) != 4 or not isinstance(index, tuple) or len(index) != 4:
        return None
    whole = slice(None, None, None)
    tail = index[2]
    if any(not isinstance(i, slice) or i != whole for i in index[:2] + index[3:]) or not isinstance(tail, slice):
        return None
    if not isinstance(tail.start, int) or tail.start >= 0 or tail.stop is not None or tail.step not in (None, 1):
        return None
    return -tail.start


class SlidingWindowPass:
    """After the merge stages: a graph whose cache has sliding-window layers (a lifted window size, the
    config's layer types, or a window trim among its outputs) is merged only if every trim still keeps a
    full window of the merged sequence; else ``RewriteError`` (the backend compiles it unchanged)."""

    def __init__(self, ctx: GraphContext):
        self.ctx = ctx

    def __call__(self, graph: fx.Graph) -> int:
        ctx = self.ctx
        video = ctx.video
        if video is None:
            return 0
        view = ctx.view
        trims = [(node, kept) for node in view.outputs if (kept := kept_tail(node)) is not None]
        sliding = trims or has_sliding_layers(ctx.model_config) or any(
            is_sliding_window_cache_input(n) for n in graph.find_nodes(op="placeholder"))
        shortest = ctx.inner.new_length if ctx.inner is not None else video.new_length
        if not sliding or shortest == video.length:
            return 0
        if not trims:
            raise RewriteError("the cache has sliding-window layers but no window trim (x[:, :, -(W-1):, :]) "
                               "leaves the graph: their token count (a Python int Dynamo replays at the traced "
                               "length) cannot be checked against the merged prompt")
        for node, kept in trims:
            layer = view.layers.decoder.get(node)
            after_inner = ctx.inner is not None and (layer is None or layer >= ctx.inner.layer)
            removed = video.length - (ctx.inner.new_length if after_inner else video.new_length)
            held = shape_of(node.args[0])[2] - removed  # the layer's past (none in a prompt) and merged prompt
            if held < kept:
                raise RewriteError(
                    f"the merged prompt leaves {held} tokens to a sliding-window layer of window {kept + 1} "
                    f"(layer {layer}): its cache counts tokens in a Python int (cumulative_length) that "
                    f"Dynamo replays at the traced length ({held + removed}), so decoding would size the "
                    f"window mask for more keys than it holds; HoliTom merges beside a sliding window only "
                    f"when the merged prompt fills it ({held} < {kept} = window - 1)")
        return 0
