"""Support sweep over transformers' video model classes (``holitom_fx.sweep``).

CI runs a fixed reduced subset; ``HOLITOM_FULL=1`` runs every class of the installed transformers whose
``forward`` takes ``pixel_values_videos`` (those outside the subset are marked ``slow``).
"""

from __future__ import annotations

import os

import pytest

from holitom_fx import sweep

#: Classes with a layout record: must merge.
RECORDED = ("LlavaOnevisionForConditionalGeneration", "LlavaNextVideoForConditionalGeneration",
            "Qwen2VLForConditionalGeneration", "Qwen2_5_VLForConditionalGeneration",
            "Qwen3VLForConditionalGeneration")
#: Built in a few seconds each; VideoLLaVA has no record (generic path).
REDUCED = RECORDED + ("VideoLlavaForConditionalGeneration",)
#: Scatter-style boundary (masked_scatter of [B*T, N, E] per-frame features) and standard decoder layers:
#: the generic path must apply to these too.
SCATTER_STANDARD = ("VideoLlavaForConditionalGeneration",)

FULL = bool(os.environ.get("HOLITOM_FULL"))
CLASSES = sweep.discover()


def _params():
    for name, model_types in CLASSES.items():
        marks = () if name in REDUCED else (pytest.mark.slow,)
        yield pytest.param(name, model_types, id=model_types[0], marks=marks)


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def test_discovery_finds_the_recorded_classes():
    assert set(REDUCED) <= set(CLASSES)
    for name in CLASSES:
        assert name.endswith("ForConditionalGeneration") or name[0].isupper()


@pytest.mark.parametrize("name, model_types", list(_params()))
def test_sweep_class(name, model_types):
    if name not in REDUCED and not FULL:
        pytest.skip("full sweep: HOLITOM_FULL=1")
    result = sweep.sweep_one(name, model_types)
    print(result)
    if name in RECORDED or name in SCATTER_STANDARD:
        assert result.status == sweep.APPLIED, result
    if result.status == sweep.APPLIED:
        assert result.shortened_prefill, result
    elif result.status == sweep.PASSED:
        assert result.logits_match_eager, result
        assert result.reason, result
    elif result.status == sweep.FAILED:
        assert not result.ours, f"HoliTom's backend raised where a plain backend runs: {result}"
    else:
        assert result.status == sweep.NOT_BUILT and result.reason, result
        if name in REDUCED:
            pytest.fail(f"{name} must build tiny: {result.reason}")


def test_a_failure_in_the_backend_is_told_from_the_model_s_own(monkeypatch):
    """The sweep must be able to blame HoliTom: a backend that raises while a plain one runs is ``ours``."""
    from holitom_fx import backend as backend_module

    def broken(self, gm, example_inputs):
        raise RuntimeError("injected backend failure")

    monkeypatch.setattr(backend_module.HoliTomBackend, "_compile", broken)
    result = sweep.sweep_one("LlavaOnevisionForConditionalGeneration", ["llava_onevision"])
    assert result.status == sweep.FAILED and result.ours, result
    assert "injected backend failure" in result.reason
