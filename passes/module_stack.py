"""The one place that reads ``nn_module_stack``: which decoder or vision layer a node belongs to."""

from __future__ import annotations

import re

import torch.fx as fx

# `...language_model.layers.3.self_attn`, `...visual.blocks.3.attn` or `..._modules['layers']._modules['3']...`
_LAYER = re.compile(r"(?:layers|blocks)(?:\.|'\]\._modules\[')(\d+)")
_VISION = re.compile(r"vision|visual|image_encoder|_tower", re.IGNORECASE)  # video_tower, image_tower


def module_path(node: fx.Node) -> str:
    """Innermost module path of a computed node ('' for inputs and nodes outside any module)."""
    if node.op in ("placeholder", "get_attr", "output"):
        return ""
    stack = node.meta.get("nn_module_stack") or {}
    entries = list(stack.values())
    if not entries:
        return ""
    last = entries[-1]
    return last[0] if isinstance(last, tuple) else str(last)


def _layer_index(path: str) -> int | None:
    found = _LAYER.findall(path)
    return int(found[-1]) if found else None


def _in_vision_tower(node: fx.Node, path: str, vision_classes: frozenset[type]) -> bool:
    """By path, or by module class: a graph traced from inside the vision tower (the tower compiled
    on its own, a frame resumed after a graph break) has paths like ``L['self'].layers.3``."""
    stack = node.meta.get("nn_module_stack") or {}
    return bool(_VISION.search(path)) or any(
        isinstance(entry, tuple) and entry[1] in vision_classes for entry in stack.values())


def decoder_layer(node: fx.Node, vision_classes: frozenset[type] = frozenset()) -> int | None:
    """Index of the language-model decoder layer the node was traced in, or None."""
    path = module_path(node)
    if not path or _in_vision_tower(node, path, vision_classes):
        return None
    return _layer_index(path)


def vision_layer(node: fx.Node, vision_classes: frozenset[type] = frozenset()) -> int | None:
    """Index of the vision-encoder layer the node was traced in, or None."""
    path = module_path(node)
    if not path or not _in_vision_tower(node, path, vision_classes):
        return None
    return _layer_index(path)
