"""``EagerCalls``: the bound model's forward calls that Dynamo ran eagerly, where no HoliTom graph runs.

Dynamo gives up on a frame it has compiled ``torch._dynamo.config.recompile_limit`` times (8) and runs it,
and everything it calls, uncompiled from then on, saying so only in its own log. transformers' models share
such frames (the forward wrapper in ``transformers.utils.generic``): with a few models compiled in one
process, a later one's prompt runs uncompiled and HoliTom never sees it, so nothing is merged; a decode step
that runs uncompiled after a merged prefill is not shifted to the merged prompt's positions.

``HoliTomBackend.bind(model)`` watches for such calls with a forward pre-hook on the model's input
embedding (``get_input_embeddings()``), which does nothing while Dynamo traces (inside a compiled graph the
hook is traced away): the hook runs only when the frame that embeds the tokens runs eagerly, and hands the
token ids to the backend. The model is not changed otherwise.
"""

from __future__ import annotations

from typing import Callable

import torch


class EagerCalls:
    """Hooks ``model``'s input embedding; ``on_eager(ids)`` for each call that embeds ids outside Dynamo."""

    def __init__(self, model: torch.nn.Module, on_eager: Callable[[torch.Tensor], None]):
        self._handles = []
        try:
            embeddings = model.get_input_embeddings()
        except (AttributeError, NotImplementedError):  # a model of its own without the transformers API
            embeddings = None
        self.watching = isinstance(embeddings, torch.nn.Module)
        if self.watching:
            self._handles.append(embeddings.register_forward_pre_hook(self._hook(on_eager)))

    @staticmethod
    def _hook(on_eager: Callable[[torch.Tensor], None]):
        def seen(module, args):
            if torch.compiler.is_compiling():
                return None
            ids = args[0] if args else None
            if isinstance(ids, torch.Tensor) and not ids.is_floating_point() and ids.dim() >= 1:
                on_eager(ids)
            return None

        return seen

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
