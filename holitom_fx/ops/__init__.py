"""HoliTom as small pure tensor functions (``../shared/HOLITOM_SPEC.md``), traceable by torch.compile."""

from .inner import inner_kept_count, inner_merge
from .outer import OuterMergeResult, exact_budget, outer_merge
from .saliency import attention_received, feature_saliency, pool_saliency
from .segmentation import Segmentation, frame_similarity, segment_frames
from .sequence import (gather_tokens, last_query_attention, last_query_probabilities, place_by_frame, span_mask,
                       splice_span)

__all__ = [
    "OuterMergeResult",
    "Segmentation",
    "attention_received",
    "exact_budget",
    "feature_saliency",
    "frame_similarity",
    "gather_tokens",
    "inner_kept_count",
    "inner_merge",
    "last_query_attention",
    "last_query_probabilities",
    "outer_merge",
    "place_by_frame",
    "pool_saliency",
    "segment_frames",
    "span_mask",
    "splice_span",
]
