"""``EncodedGrids``: the frame grid ``[V, 3]`` (t, h, w) of the last video the model's encoder was called with.

``generate()`` encodes the video before the prefill (transformers' ``mm_encoder_outputs``) and drops
``video_grid_thw`` from the prefill's inputs: a model that flattens the video into one span with 1-D
positions (EXAONE-4.5, Dots3-Note, ...) then hands its prefill graph nothing that says how many frames the
span holds. Its encoder was called with the grid, though: ``HoliTomBackend.bind(model)`` keeps it with a
forward pre-hook on each outermost submodule whose ``forward`` takes ``grid_thw`` (the convention of
Qwen-style vision towers), read only when the encoder runs eagerly (``generate()``'s encoding; a compiled
forward has the grid in its own graph). The model is not changed otherwise; the prefill that uses the grid
consumes it, and checks that its video spans have exactly the tokens the grid gives (``encoded_frame_grid``).
"""

from __future__ import annotations

import inspect

import torch

GRID_PARAMETER = "grid_thw"


def _grid_position(module: torch.nn.Module) -> int | None:
    """Index of ``grid_thw`` among ``module.forward``'s positional parameters, None when it takes none."""
    try:
        parameters = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    names = [p.name for p in parameters]
    return names.index(GRID_PARAMETER) if GRID_PARAMETER in names else None


class EncodedGrids:
    """Hooks ``model``'s video encoders; ``last`` is the grid of the latest eager encoder call, until taken."""

    def __init__(self, model: torch.nn.Module):
        self.last: torch.Tensor | None = None
        self.encoders: list[str] = []
        self._handles = []
        for name, module in model.named_modules():
            if any(name.startswith(outer + ".") for outer in self.encoders):
                continue
            position = _grid_position(module)
            if position is not None:
                self.encoders.append(name)
                self._handles.append(module.register_forward_pre_hook(self._hook(position), with_kwargs=True))

    def _hook(self, position: int):
        def record(module, args, kwargs):
            if torch.compiler.is_compiling():
                return None
            grid = kwargs.get(GRID_PARAMETER, args[position] if len(args) > position else None)
            if isinstance(grid, torch.Tensor) and grid.ndim == 2 and grid.shape[-1] == 3 \
                    and not grid.is_floating_point():
                self.last = grid.detach().clone()
            return None

        return record

    def take(self) -> None:
        """A prefill used (or passed) the grid: a later prefill needs its own encoder call."""
        self.last = None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
