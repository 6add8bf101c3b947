"""The first messages a user meets: a model HoliTom cannot merge says so once, with the reason and where
to read what applies; a model with no video input is told it will pass through; a config error names
its field."""

from __future__ import annotations

import logging

import pytest
import torch

import holitom_fx
from holitom_fx import HoliTomBackend, HoliTomConfig
from holitom_fx.backend import SUPPORT_TABLE

from .test_toy_video_models import toy_inputs
from .toy_video_models import WhereToy

pytestmark = pytest.mark.usefixtures("fresh_dynamo")


class TextOnly(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(16, 8)

    def forward(self, input_ids):
        return self.embed(input_ids).sum(-1)


def test_compile_on_a_model_without_video_input_says_it_will_pass_through(caplog):
    with caplog.at_level(logging.INFO, logger="holitom_fx"):
        model = TextOnly()
        backend = holitom_fx.compile(model)
        model(torch.tensor([[1, 2, 3]]))
    said = [r for r in caplog.records if "takes no video or pixel input (input_ids)" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.WARNING and SUPPORT_TABLE in said[0].getMessage()
    assert "will pass them through unchanged" in said[0].getMessage() and backend.fallbacks == 0


@torch.no_grad()
def test_a_refused_graph_is_said_once_with_the_reason_and_counted_every_time(caplog):
    """budget='reference' cannot be compiled (its token count depends on the data): every graph with a
    video falls back, one warning says why and where to read more."""
    model = WhereToy()
    backend = HoliTomBackend(HoliTomConfig(budget="reference"), compiler="eager")
    compiled = torch.compile(model, backend=backend)
    with caplog.at_level(logging.WARNING, logger="holitom_fx"):
        for seed in (0, 1):
            torch._dynamo.reset()  # a fresh trace: its graph is refused again
            compiled(*toy_inputs(model, seed=seed))
    warnings = [r for r in caplog.records if "left a graph unchanged" in r.getMessage()]
    assert backend.fallbacks >= 2 and len(warnings) == 1
    assert "budget='reference'" in warnings[0].getMessage() and SUPPORT_TABLE in warnings[0].getMessage()


def test_a_config_error_names_the_field():
    with pytest.raises(ValueError, match=r"HoliTomConfig\.retain_ratio=0 is invalid"):
        HoliTomConfig(retain_ratio=0)
