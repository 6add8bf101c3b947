"""When the ops may look at tensor values to validate them."""

from __future__ import annotations

import torch
from torch._guards import detect_fake_mode


def values_checkable(*tensors: torch.Tensor) -> bool:
    """True for real tensors run eagerly: inside a graph a value check would be a host sync,
    and fake tensors (shape propagation, tracing) have no values."""
    return not torch.compiler.is_compiling() and detect_fake_mode(tensors) is None
