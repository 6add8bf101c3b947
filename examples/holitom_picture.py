"""What HoliTom's outer stage did to each visual token of a clip, drawn over the frames (matplotlib, Agg).

The backend's report holds counts and segments, not the fate of each token. This module recomputes
them eagerly with the public op ``holitom_fx.ops.outer_merge`` on the frame-grid features and saliency
the model produces, and ``examples/run_video.py`` checks them against the compiled run's report.

Every token ``(t, n)`` of the ``T x N`` grid ends the outer stage in one of five ways:

* kept: a dynamic token the saliency ranks among its frame's top ones (or a cluster centre);
* kept, static: the first frame's token of a position that does not change over its segment;
  it enters the LLM carrying that segment's mean (and the static tokens merged into it);
* merged over time: the same static position in a later frame of the segment, folded into that mean;
* merged into a kept token: a static token folded into the nearest cluster centre of its frame (DPC-KNN);
* dropped: a dynamic token below its frame's budget.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import torch

from holitom_fx import HoliTomConfig
from holitom_fx.ops import frame_similarity, outer_merge
from holitom_fx.ops.segmentation import static_token_mask

KEPT, KEPT_STATIC, MERGED_TIME, MERGED_SPACE, DROPPED = range(5)
#: short name, legend label, RGB, overlay opacity (the frame shows through kept tokens, less through the others)
FATES = {
    KEPT: ("kept", "kept", (0.10, 0.75, 0.25), 0.30),
    KEPT_STATIC: ("kept static", "kept, static: carries its segment's mean", (0.15, 0.45, 0.95), 0.35),
    MERGED_TIME: ("merged over time", "merged over time into its segment's first frame", (0.55, 0.75, 1.00), 0.65),
    MERGED_SPACE: ("merged into a kept token", "merged into a kept token of its frame", (1.00, 0.60, 0.10), 0.65),
    DROPPED: ("dropped", "dropped", (0.10, 0.10, 0.10), 0.80),
}
SEGMENT_COLORS = ("#d62728", "#9467bd", "#17becf", "#bcbd22", "#e377c2", "#8c564b")


@dataclass
class TokenFates:
    """The outer stage of one video, token by token."""

    fate: torch.Tensor  # LongTensor[T, N]: KEPT ... DROPPED
    segments: list[tuple[int, int]]  # inclusive frame windows
    kept: int  # grid tokens out of the outer stage (pass-through tokens such as a newline not counted)

    def count(self, fate: int) -> int:
        return int((self.fate == fate).sum())


def token_fates(features: torch.Tensor, saliency: torch.Tensor, config: HoliTomConfig) -> TokenFates:
    """Run ``outer_merge`` on ``features [T, N, E]`` ranked by ``saliency [T, N]``; classify every token.

    Kept tokens are the merge's representatives (``positions``). The rest follow the op's grouping
    (``holitom_fx/ops/outer.py``): a static token in a later frame of its window is folded into the
    window mean; any other token that is not kept is merged into a cluster centre when its group
    (a frame's static or dynamic tokens) has contextual seats, and dropped otherwise.
    """
    with torch.no_grad():
        result = outer_merge(features, saliency, config)
        num_frames, num_tokens, _ = features.shape
        seg = result.segmentation
        static = static_token_mask(frame_similarity(features.float()), config.tau, seg)
        frames = torch.arange(num_frames)
        representative = static & (seg.window_start == frames)[:, None]
        absorbed = static & ~representative
        absorbed_group = 2 * num_frames
        group = torch.where(absorbed, absorbed_group, 2 * frames[:, None] + (~static).long())
        kept_mask = torch.zeros(num_frames * num_tokens, dtype=torch.bool)
        kept_mask[result.positions.cpu()] = True
        kept_mask = kept_mask.view(num_frames, num_tokens)
        kept = torch.zeros(absorbed_group + 1, dtype=torch.long).scatter_add(
            0, group[kept_mask], torch.ones(int(kept_mask.sum()), dtype=torch.long))
        ids = torch.arange(absorbed_group + 1)
        dynamic_group = (ids % 2 == 1) & (ids < absorbed_group)
        dominant = torch.where(dynamic_group, (kept.double() * (1.0 - config.contextual_ratio)).round().long(), 0)
        contextual_seats = (kept - dominant)[group]
        fate = torch.where(kept_mask, torch.where(representative, KEPT_STATIC, KEPT),
                           torch.where(absorbed, MERGED_TIME, torch.where(contextual_seats > 0, MERGED_SPACE, DROPPED)))
        segments = [(int(s), int(e)) for s, e in seg.segments.tolist()]
    return TokenFates(fate=fate, segments=segments, kept=int(result.tokens.shape[0]))


def draw(frames: torch.Tensor, fates: TokenFates, title: str, out: str, columns: int = 8, frame_inches: float = 1.45,
         dpi: int = 100) -> str:
    """Draw ``frames [T, 3, H, W]`` (uint8) with each token's fate over its patch; write a PNG to ``out``.

    The PNG is re-encoded with a 256-colour palette (Pillow, matplotlib's own dependency) to stay small.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as mpatches
    import matplotlib.pyplot as plt
    from PIL import Image

    num_frames, num_tokens = fates.fate.shape
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(f"draw: {num_tokens} tokens per frame is not a square grid")
    columns = min(columns, num_frames)
    rows = math.ceil(num_frames / columns)
    colors = torch.tensor([FATES[f][2] + (FATES[f][3],) for f in sorted(FATES)])
    segment_of = {t: i for i, (start, end) in enumerate(fates.segments) for t in range(start, end + 1)}

    fig, axes = plt.subplots(rows, columns, figsize=(columns * frame_inches, rows * (frame_inches + 0.3) + 1.3),
                             squeeze=False)
    for t, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if t >= num_frames:
            ax.axis("off")
            continue
        image = frames[t].permute(1, 2, 0).numpy()
        height, width = image.shape[:2]
        ax.imshow(image, extent=(0, width, height, 0), interpolation="bilinear")
        overlay = colors[fates.fate[t]].view(side, side, 4).numpy()
        ax.imshow(overlay, extent=(0, width, height, 0), interpolation="nearest")
        for k in range(1, side):
            ax.axhline(k * height / side, color="white", linewidth=0.3, alpha=0.6)
            ax.axvline(k * width / side, color="white", linewidth=0.3, alpha=0.6)
        segment = segment_of[t]
        color = SEGMENT_COLORS[segment % len(SEGMENT_COLORS)]
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(2.5)
        start, end = fates.segments[segment]
        label = f"t={t}" + (f"  segment {segment + 1}: {start}-{end}" if t == start else "")
        ax.set_title(label, fontsize=6.5, color=color if t == start else "black", loc="left", pad=2)
        kept = int(((fates.fate[t] == KEPT) | (fates.fate[t] == KEPT_STATIC)).sum())
        ax.set_xlabel(f"{kept} of {num_tokens} kept", fontsize=6, labelpad=1)

    handles = [mpatches.Patch(facecolor=FATES[f][2], edgecolor="grey", label=f"{FATES[f][1]} ({fates.count(f)})")
               for f in sorted(FATES)]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=8.5)
    fig.subplots_adjust(left=0.01, right=0.99, top=1 - 0.75 / fig.get_figheight(), bottom=0.75 / fig.get_figheight(),
                        wspace=0.06, hspace=0.4)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=256, method=Image.Quantize.FASTOCTREE).save(
        out, format="PNG", optimize=True)
    return out
