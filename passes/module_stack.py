"""The one place that reads ``nn_module_stack``: which numbered layer of which stack a node belongs to.

A stack is any module container whose children are numbered (``layers``, ``blocks``, ``h``, ...);
whether it is the decoder or an encoder is a dataflow question (``passes.dataflow``), not a name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.fx as fx

# `L['self']._modules['layers']._modules['3']` and `L['self'].layers[3]` read as `L['self'].layers.3`
_MODULES_ITEM = re.compile(r"\._modules\[['\"]([^'\"]+)['\"]\]|\[['\"]?(\d+)['\"]?\]")
_VISION = re.compile(r"vision|visual|image_encoder|_tower", re.IGNORECASE)  # a hint where dataflow has none


@dataclass(frozen=True)
class LayerSlot:
    stack: str  # path of the container, e.g. "L['self'].model.language_model.layers"
    index: int
    vision_path: bool  # the path or a module class says "vision tower" (used only without token ids)


def module_path(node: fx.Node) -> str:
    """Innermost module path of a computed node ('' for inputs and nodes outside any module)."""
    if node.op in ("placeholder", "get_attr", "output"):
        return ""
    stack = node.meta.get("nn_module_stack") or {}
    entries = list(stack.values())
    if not entries:
        return ""
    last = entries[-1]
    path = last[0] if isinstance(last, tuple) else str(last)
    return _MODULES_ITEM.sub(lambda m: "." + (m.group(1) or m.group(2)), path)


def layer_slot(node: fx.Node, vision_classes: frozenset[type] = frozenset()) -> LayerSlot | None:
    """The outermost numbered container on the node's module path and its index there (an MoE expert
    list inside a decoder layer is not a stack of its own), or None."""
    path = module_path(node)
    if not path:
        return None
    parts = path.split(".")
    at = next((i for i, part in enumerate(parts) if part.isdigit() and i > 0), None)
    if at is None:
        return None
    stack = node.meta.get("nn_module_stack") or {}
    vision = bool(_VISION.search(path)) or any(
        isinstance(entry, tuple) and entry[1] in vision_classes for entry in stack.values())
    return LayerSlot(".".join(parts[:at]), int(parts[at]), vision)
