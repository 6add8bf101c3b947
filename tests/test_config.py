import dataclasses
import math

import pytest
from hypothesis import given, strategies as st

from holitom_fx import HoliTomConfig


def test_defaults_are_the_released_configuration():
    cfg = HoliTomConfig()
    assert (cfg.retain_ratio, cfg.tau, cfg.beta, cfg.contextual_ratio) == (0.10, 0.65, 0.6, 0.0)
    assert (cfg.knn, cfg.max_window, cfg.inner_layer, cfg.inner_ratio) == (7, 1024, None, 0.5)
    assert (cfg.budget, cfg.positions) == ("exact", "compact")


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        HoliTomConfig().tau = 0.5


BAD_VALUES = [
    ("retain_ratio", 0.0), ("retain_ratio", 1.5), ("retain_ratio", math.nan), ("retain_ratio", "0.1"),
    ("tau", -2.0), ("tau", math.inf), ("beta", -0.1), ("beta", 1.1), ("contextual_ratio", 2.0),
    ("knn", 0), ("knn", 2.5), ("knn", True), ("max_window", 0), ("inner_layer", 0), ("inner_layer", "on"),
    ("inner_ratio", 1.0), ("inner_ratio", -0.5), ("budget", "approx"), ("positions", "shifted"),
]


@pytest.mark.parametrize("field,value", BAD_VALUES)
def test_bad_value_names_field_value_and_range(field, value):
    with pytest.raises(ValueError) as err:
        HoliTomConfig(**{field: value})
    message = str(err.value)
    assert field in message and repr(value) in message and "expected" in message


@given(st.floats(0.0, 1.0, exclude_min=True), st.floats(-1.0, 3.0), st.integers(1, 64))
def test_valid_values_are_accepted(ratio, tau, knn):
    cfg = HoliTomConfig(retain_ratio=ratio, tau=tau, knn=knn)
    assert cfg.retain_ratio == ratio and cfg.tau == tau and cfg.knn == knn


@pytest.mark.parametrize("depth,expected", [(28, 18), (24, 15), (4, 3), (2, 1)])
def test_default_inner_layer_is_the_spec_fraction(depth, expected):
    assert HoliTomConfig().resolve_inner_layer(depth) == expected


def test_inner_stage_switches_off_and_checks_depth():
    assert HoliTomConfig(inner_layer="off").resolve_inner_layer(28) is None
    assert HoliTomConfig(inner_ratio=0.0).resolve_inner_layer(28) is None
    with pytest.raises(ValueError, match="inner_layer=30"):
        HoliTomConfig(inner_layer=30).resolve_inner_layer(28)
