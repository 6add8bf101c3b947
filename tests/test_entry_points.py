"""The design's own usage with Dynamo's defaults: each entry point in a fresh process, no setting changed
beforehand (the suite's ``fresh_dynamo`` fixture would hide a missing one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_fresh(mode: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "tests.default_dynamo_run", mode], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):]), done.stderr


@pytest.mark.parametrize("mode", ["forward", "generate", "string", "qwen3_generate"])
def test_plain_entry_point_merges_with_dynamo_defaults(mode):
    result, log = run_fresh(mode)
    assert result["defaults"] == {"capture_scalar_outputs": False, "capture_dynamic_output_shape_ops": False}
    report = result["report"]
    assert report is not None, log[-3000:]
    assert report["tokens_after_outer"] < report["tokens_in"]
    assert report["sequence_length"][2] < report["sequence_length"][0]
    assert result["fallbacks"] == 0
    assert "HoliTom set torch._dynamo.config.capture_scalar_outputs=True" in log  # said, once
    assert log.count("HoliTom set torch._dynamo.config") == 1
