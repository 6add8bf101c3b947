"""holitom-fx: HoliTom visual-token merging for video LLMs as torch.compile/FX passes.

Layers run one way: ``holitom_fx.config`` / ``ops`` / ``archs`` <- ``passes`` <- ``holitom_fx.backend``.
The backend names are loaded on first use, so importing ``passes`` (which needs ``ops`` and ``archs``)
never runs the backend's imports first: the two packages form no import cycle.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import HoliTomConfig

_BACKEND_NAMES = ("HoliTomBackend", "HoliTomReport", "compile", "holitom_backend")

__all__ = ["HoliTomConfig", *_BACKEND_NAMES]


def __getattr__(name: str) -> Any:
    if name in _BACKEND_NAMES:
        return getattr(importlib.import_module(".backend", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
