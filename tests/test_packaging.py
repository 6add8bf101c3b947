"""Layering and registration: passes never reach the backend; backend="holitom" resolves."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from torch._dynamo.backends.registry import lookup_backend

import holitom_fx

PASSES = Path(__file__).resolve().parent.parent / "passes"


def test_passes_import_only_config_ops_and_archs():
    for path in PASSES.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("holitom_fx"):
                assert node.module.split(".")[1] in ("config", "ops", "archs"), f"{path.name}: {node.module}"
            if isinstance(node, ast.Import):
                assert not any(alias.name.startswith("holitom_fx.backend") for alias in node.names), path.name


def test_importing_passes_first_forms_no_cycle():
    subprocess.run([sys.executable, "-c", "import passes.manager, holitom_fx.backend"], check=True,
                   cwd=PASSES.parent)


def test_backend_string_resolves_to_the_default_backend():
    assert lookup_backend("holitom") is holitom_fx.holitom_backend


def test_the_lmms_eval_entry_point_imports_neither_lmms_eval_nor_torch():
    """lmms-eval loads its entry points while ``lmms_eval.models`` imports, for every command (listing tasks
    too): the entry point's package stays light, and imports where lmms-eval is not installed."""
    code = ("import sys, holitom_fx.lmms_eval_plugin as plugin; "
            "print(plugin.MODEL_NAME, [name for name in ('torch', 'lmms_eval') if name in sys.modules])")
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                          cwd=PASSES.parent)
    assert done.stdout.split() == ["holitom", "[]"]
