"""The frame grid of video spans, read from the prompt: its own 3-D rotary positions, or its frame spans.

Qwen2-VL-style models hand the decoder flat visual features ``[sum(t*h*w), E]``: the shape
says nothing of the frames. Their position ids do: within one temporal patch every token has
its own (h, w), and each patch starts again at the span's first (h, w); so a new frame starts
wherever the (h, w) of the span's first token comes back (whatever spacing the temporal row has). The grid is read once per compiled graph from the real example inputs and
checked again at each call (a video of another grid with the same token count gets a graph
of its own). A model with 1-D positions that puts each frame in a span of its own (a timestamp
between frames: VideoLLaMA3) shows its grid in the ids alone: k equal spans are k frames. A model
with 1-D positions and one flat span per video (EXAONE-4.5, Dots3-Note, ...) shows it nowhere in the
prefill: generate() encoded the video before, with its grid ``[V, 3]`` (t, h, w), which the backend
keeps (``holitom_fx.encoded_grid``); each span is then t frames of (h/m)*(w/m) tokens.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class GridError(ValueError):
    """The prompt's video spans do not share one frames x tokens grid."""


def _runs(values: list) -> list[int]:
    """Lengths of the runs of equal consecutive values."""
    lengths: list[int] = []
    for index, value in enumerate(values):
        if index and value == values[index - 1]:
            lengths[-1] += 1
        else:
            lengths.append(1)
    return lengths


def _frame_lengths(spatial: list[tuple[int, int]]) -> list[int]:
    """Tokens per frame of one span: a frame starts wherever the first token's (h, w) comes back."""
    starts = [index for index, hw in enumerate(spatial) if hw == spatial[0]] + [len(spatial)]
    return [end - start for start, end in zip(starts, starts[1:])]


def rope_frame_grid(input_ids: torch.Tensor, positions: torch.Tensor, token_id: int) -> tuple[int, int, int]:
    """``(videos per row, frames, tokens per frame)`` of the ``token_id`` spans of ``input_ids [B, L]``,
    from ``positions [R, B, L]`` whose last two rows are (h, w) (R = 3, or 4 with a text row first).
    Every row and video must share the grid (``GridError`` otherwise)."""
    if positions.ndim != 3 or positions.shape[0] not in (3, 4) or positions.shape[1:] != input_ids.shape:
        raise GridError(f"positions {tuple(positions.shape)} are not [3 or 4, B, L] for input ids "
                        f"{tuple(input_ids.shape)}")
    mask = (input_ids == token_id).tolist()
    spatial = [list(zip(h, w)) for h, w in zip(*positions[-2:].tolist())]
    grids = set()
    for row_mask, row_spatial in zip(mask, spatial):
        spans = _runs(row_mask)  # alternating runs of False/True
        start, videos = 0, []
        for length in spans:
            if row_mask[start]:
                videos.append(_frame_lengths(row_spatial[start:start + length]))
            start += length
        frames = {(len(runs), runs[0]) for runs in videos if len(set(runs)) == 1}
        if not videos or len(frames) != 1 or any(len(set(runs)) != 1 for runs in videos):
            raise GridError(f"video spans of unequal frame grids in one row: {videos}")
        grids.add((len(videos), *frames.pop()))
    if len(grids) != 1:
        raise GridError(f"rows of the batch hold different video grids: {sorted(grids)}")
    return grids.pop()


def _placeholder_spans(input_ids: torch.Tensor, token_id: int) -> list[list[int]]:
    """The lengths of the runs of ``token_id`` in each row of ``input_ids [B, L]``, in order."""
    spans = []
    for row_mask in (input_ids == token_id).tolist():
        runs, start = [], 0
        for length in _runs(row_mask):
            if row_mask[start]:
                runs.append(length)
            start += length
        spans.append(runs)
    return spans


def span_frame_grid(input_ids: torch.Tensor, token_id: int) -> tuple[int, int, int]:
    """``(spans per row, 1, tokens per span)`` when the ``token_id`` placeholders of every row of
    ``input_ids [B, L]`` form k > 1 spans of one length: frames as spans. ``GridError`` otherwise."""
    grids = set()
    for runs in _placeholder_spans(input_ids, token_id):
        if len(runs) < 2 or len(set(runs)) != 1:
            raise GridError(f"video placeholder spans {runs} are not k > 1 spans of one length (frames as spans)")
        grids.add((len(runs), 1, runs[0]))
    if len(grids) != 1:
        raise GridError(f"rows of the batch hold different video grids: {sorted(grids)}")
    return grids.pop()


def encoded_frame_grid(input_ids: torch.Tensor, token_id: int, grid_thw: torch.Tensor,
                       merge: tuple[int, int] | None) -> tuple[int, int, int]:
    """``(spans per row, frames, tokens per frame)`` of the ``token_id`` spans of ``input_ids [B, L]``, one
    video per span (row-major), from the grid ``[V, 3]`` (t, h, w) the video encoder was called with: a
    span of ``t * (h/m) * (w/m)`` tokens is t frames of ``(h/m) * (w/m)`` (``merge`` = (m, m), the encoder's
    spatial merge; None: ``span / t`` per frame, one entry per span). A span may hold several consecutive
    entries of one (h, w) (GLM-5-Next encodes each frame as an entry of t = 1): their frames add up. An encoder
    that pools a video's temporal patches into one frame (Kimi-K2.5) gives a one-frame video. ``GridError``
    when the spans and the grid disagree (another video was encoded last)."""
    if grid_thw.ndim != 2 or grid_thw.shape[-1] != 3:
        raise GridError(f"the encoded grid {tuple(grid_thw.shape)} is not [V, 3]")
    spans = _placeholder_spans(input_ids, token_id)
    flat = [length for runs in spans for length in runs]
    thw = grid_thw.tolist()
    if merge is None and len(flat) != len(thw):
        raise GridError(f"{len(flat)} video spans {flat} for the {len(thw)} videos the encoder was last called "
                        f"with ({thw})")
    grids, row = set(), 0
    for length in flat:  # a span holds the next grid entries whose tokens add up to it (frames encoded apart)
        frames, tokens, sides = 0, 0, set()
        while row < len(thw) and tokens < length:
            t, h, w = thw[row]
            per_frame = (h // merge[0]) * (w // merge[1]) if merge is not None else length // max(t, 1)
            if merge is not None and t > 1 and tokens == 0 and per_frame == length:
                # The encoder pooled the t temporal patches into one frame (Kimi-K2.5): a one-frame video,
                # which HoliTom merges spatially (no temporal windows to find).
                log.info("the video encoder made one frame of %d tokens of %d temporal patches (grid t, h, w = "
                         "%d, %d, %d): merged as a one-frame video", per_frame, t, t, h, w)
                t = 1
            frames, tokens, row = frames + t, tokens + t * per_frame, row + 1
            sides.add(per_frame)
        if tokens != length or len(sides) != 1 or not frames:
            raise GridError(f"a video span of {length} tokens is not the frames of the grid the encoder was last "
                            f"called with ({thw}, merge {merge})")
        grids.add((frames, sides.pop()))
    if row != len(thw):
        raise GridError(f"video spans {flat} hold fewer tokens than the grid the encoder was last called with "
                        f"({thw}, merge {merge})")
    counts = {len(runs) for runs in spans}
    if len(grids) != 1 or len(counts) != 1:
        raise GridError(f"the videos do not share one frame grid: {sorted(grids)}, spans per row {sorted(counts)}")
    return (counts.pop(), *grids.pop())
