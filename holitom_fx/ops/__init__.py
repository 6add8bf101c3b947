"""HoliTom as small pure tensor functions (``../shared/HOLITOM_SPEC.md``), traceable by torch.compile."""

from .inner import inner_kept_count, inner_merge
from .outer import OuterMergeResult, exact_budget, outer_merge
from .saliency import attention_received, feature_saliency, pool_saliency
from .segmentation import Segmentation, frame_similarity, segment_frames
from .sequence import (gather_tokens, kept_slots, last_query_attention, last_query_probabilities, mask_dropped_slots,
                       place_by_frame, restore_dropped_slots, span_mask, splice_span)

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
    "kept_slots",
    "last_query_attention",
    "last_query_probabilities",
    "mask_dropped_slots",
    "outer_merge",
    "place_by_frame",
    "pool_saliency",
    "restore_dropped_slots",
    "segment_frames",
    "span_mask",
    "splice_span",
]
