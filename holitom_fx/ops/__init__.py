"""HoliTom as small pure tensor functions (``../shared/HOLITOM_SPEC.md``), traceable by torch.compile."""

from .inner import inner_kept_count, inner_merge
from .outer import OuterMergeResult, exact_budget, outer_merge
from .segmentation import Segmentation, frame_similarity, segment_frames

__all__ = [
    "OuterMergeResult",
    "Segmentation",
    "exact_budget",
    "frame_similarity",
    "inner_kept_count",
    "inner_merge",
    "outer_merge",
    "segment_frames",
]
