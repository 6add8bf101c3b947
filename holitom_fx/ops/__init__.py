"""HoliTom as small pure tensor functions (``../shared/HOLITOM_SPEC.md``), traceable by torch.compile."""

from .inner import inner_kept_count, inner_merge
from .outer import OuterMergeResult, exact_budget, outer_merge
from .segmentation import Segmentation, frame_similarity, segment_frames
from .sequence import gather_tokens, last_query_attention, splice_span

__all__ = [
    "OuterMergeResult",
    "Segmentation",
    "exact_budget",
    "frame_similarity",
    "gather_tokens",
    "inner_kept_count",
    "inner_merge",
    "last_query_attention",
    "outer_merge",
    "segment_frames",
    "splice_span",
]
