"""scripts/check_import_cycles.py (in `make lint`): finds every module cycle, allows only the listed ones."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.packaging

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "check_import_cycles.py"


@pytest.fixture(scope="module")
def checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("check_import_cycles", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_finds_each_cycle_once_and_ignores_chains(checker):
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set(), "x": {"y"}, "y": {"x"}, "z": {"z2"}}
    assert checker.cycles(edges) == [frozenset({"a", "b", "c"}), frozenset({"x", "y"})]


def test_reports_new_cycles_and_allowances_whose_cycle_is_gone(checker):
    found = [frozenset({"p.a", "p.b"})]
    known = [frozenset({"p.a", "p.b"}), frozenset({"q.x", "q.y"})]
    assert checker.problems(found, known) == [
        "listed as a known cycle but gone (delete it from KNOWN_CYCLES): q.x, q.y"]
    assert checker.problems([*found, frozenset({"r.m", "r.n"})], known[:1]) == ["import cycle: r.m -> r.n"]


def test_the_project_has_no_cycle_but_the_known_ones():
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
