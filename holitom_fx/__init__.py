"""holitom-fx: HoliTom visual-token merging for video LLMs as torch.compile/FX passes."""

from .backend import HoliTomBackend, HoliTomReport, compile, holitom_backend
from .config import HoliTomConfig

__all__ = ["HoliTomBackend", "HoliTomConfig", "HoliTomReport", "compile", "holitom_backend"]
