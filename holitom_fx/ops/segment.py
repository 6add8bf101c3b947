"""A deterministic segment sum: the one reduction HoliTom's merges need, in ``O(rows * width)`` work.

Window means and cluster merges both add rows into a few slots. Inductor lowers ``index_add`` /
``scatter_add`` to atomic adds (OpenMP threads over the source rows on CPU, ``tl.atomic_add`` on GPU),
whose float sums depend on thread timing; a one-hot matrix product is deterministic but costs
``rows * slots * width``. So this one op stays opaque to Inductor (a ``torch.library`` custom op, traced
as a single node: no graph break) and runs ATen's deterministic kernels: ``index_add_`` on CPU (rows
added in index order), the sort-based ``index_put_(accumulate=True)`` on CUDA. Same input, same bits,
run to run.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("holitom::segment_sum", mutates_args=())
def segment_sum(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """``out[s] = sum of values[i] over segment[i] == s``, ``out[num_segments, *values.shape[1:]]``.

    ``segment`` is a LongTensor of ``values.shape[0]`` ids in ``[0, num_segments)``; empty segments are 0.
    """
    out = values.new_zeros((num_segments, *values.shape[1:]))
    if not values.is_cuda:
        return out.index_add_(0, segment, values)
    # Deterministic mode selects the sort-based kernel whatever the torch version's default for CUDA.
    enabled = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        return out.index_put_((segment,), values, accumulate=True)
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


@segment_sum.register_fake
def _(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    return values.new_empty((num_segments, *values.shape[1:]))
