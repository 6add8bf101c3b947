"""holitom-fx: HoliTom visual-token merging for video LLMs as torch.compile/FX passes."""

from .config import HoliTomConfig

__all__ = ["HoliTomConfig"]
