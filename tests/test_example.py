"""``examples/run_video.py``, the main example: on a reduced setting of its embedded default (8 frames of the
clip made in code, one timed prefill, two new tokens) it writes a valid, small PNG of the tokens' fates and
prints one summary block whose segments and token counts are the backend's report."""

import importlib.util
import os
import re
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_example(monkeypatch):
    spec = importlib.util.spec_from_file_location("run_video", os.path.join(ROOT, "examples", "run_video.py"))
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "run_video", module)  # its dataclasses look their module up
    monkeypatch.syspath_prepend(os.path.join(ROOT, "examples"))  # holitom_picture, next to it
    spec.loader.exec_module(module)
    return module


def summary_value(summary: str, field: str) -> str:
    found = re.search(rf"^{field}\s+(.+)$", summary, re.MULTILINE)
    assert found, f"no {field!r} line in the summary:\n{summary}"
    return found.group(1)


@pytest.mark.usefixtures("fresh_dynamo")
def test_main_example_draws_the_merge_and_summarizes_the_report(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    from PIL import Image

    out = tmp_path / "picture.png"
    run = load_example(monkeypatch).main(["--frames", "8", "--repeats", "1", "--new-tokens", "2", "--out", str(out)])
    printed = capsys.readouterr().out
    report = run.report

    # the picture: where it says, a PNG Pillow reads whole, small
    assert run.picture == str(out) and f"picture        {out}" in printed
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) < 300 * 1024
    with Image.open(out) as image:
        image.verify()

    # one summary block, and its numbers are the compiled run's report
    assert printed.count("HoliTom summary") == 1 and run.summary in printed
    segments = summary_value(run.summary, "segments")
    assert segments == f"{len(report.segments[0])}: frames " + ", ".join(f"{s}-{e}" for s, e in report.segments[0])
    tokens = re.fullmatch(r"(\d+) -> (\d+) \(outer stage.*\) -> (\d+) \(inner stage, decoder layer (\d+)\)",
                          summary_value(run.summary, "visual tokens"))
    assert tokens, run.summary
    assert tuple(map(int, tokens.groups())) == (report.tokens_in, report.tokens_after_outer, report.tokens_after_inner,
                                                report.inner_layer)
    sequence = re.match(r"(\d+) -> (\d+) -> (\d+) tokens", summary_value(run.summary, "sequence"))
    assert tuple(map(int, sequence.groups())) == report.sequence_length
    assert report.frames == 8 and report.tokens_in == 8 * 16 + 1  # 4x4 pooled tokens per frame + the newline
    assert report.saliency.startswith("vision attention")
    assert re.search(r"vanilla [\d.]+ ms, HoliTom [\d.]+ ms", summary_value(run.summary, "prefill"))

    # every token of the grid has one fate; the kept ones are the outer stage's output
    fates = run.fates
    assert fates.fate.shape == (8, 16) and bool(((fates.fate >= 0) & (fates.fate <= 4)).all())
    assert fates.kept == round(0.15 * 8 * 16) == report.tokens_after_outer - 1
    assert int(torch.bincount(fates.fate.flatten(), minlength=5)[:2].sum()) == fates.kept
