#!/usr/bin/env python3
"""Fail on a test function that cannot fail: one whose body asserts nothing.

A test function is a ``test_*`` function (module level, or a method of a ``Test*`` class) in a
``test_*.py`` file. It asserts when its own body contains one of:

* an ``assert`` statement;
* ``pytest.raises(…)`` or ``pytest.fail(…)`` (also imported bare: ``raises(…)``, ``fail(…)``);
* a call to an asserting helper. The convention: a helper that raises ``AssertionError`` when the
  behaviour is wrong is named ``assert_…`` (``assert_delivered(…)``, ``mock.assert_called_once()``).

The body of a nested function counts only where the test surely runs it: it calls it
(``asyncio.run(scenario())``) or hands it to a plain function (``run(scenario)``). Handed to a method
(``output.apply(check)``, ``loop.call_soon(check)``) it is a callback that may never run, and lambdas
and nested classes never count.

Polling helpers (``wait_for``, ``wait_until``) do not count: a wait for a condition that was already
true proves nothing, so the test states what it expects with an assertion of its own.

Usage: ``scripts/check_test_assertions.py [PATH …]`` (files or directories; default ``tests``).
Prints ``file:line: name`` per offender and exits 1 if there is any.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ASSERTING_CALLS = frozenset({"raises", "fail"})
"""pytest functions that make a test fail by themselves (``pytest.raises``, ``pytest.fail``)."""

ASSERTING_PREFIX = "assert_"
"""Name prefix of helpers that raise AssertionError themselves (the project's convention)."""

_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)


def _own_nodes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """Every node of the function's body, not descending into nested functions, lambdas or classes."""
    stack: list[ast.AST] = [node for node in func.body if not isinstance(node, _SCOPES)]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(child for child in ast.iter_child_nodes(node) if not isinstance(child, _SCOPES))


def _called_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _is_asserting_call(call: ast.Call) -> bool:
    name = _called_name(call)
    if name is None:
        return False
    if name.startswith(ASSERTING_PREFIX):
        return True
    if name not in ASSERTING_CALLS:
        return False
    # pytest.raises / pytest.fail, or the bare names imported from pytest
    if isinstance(call.func, ast.Attribute):
        return isinstance(call.func.value, ast.Name) and call.func.value.id == "pytest"
    return True


def _run_names(nodes: list[ast.AST]) -> set[str]:
    """Names the nodes surely run: called (``f()``) or handed to a plain function (``run(f)``)."""
    names: set[str] = set()
    for node in nodes:
        if not isinstance(node, ast.Call):
            continue
        if isinstance(node.func, ast.Name):
            names.add(node.func.id)
            names.update(arg.id for arg in node.args if isinstance(arg, ast.Name))
    return names


def _nested_functions(func: ast.FunctionDef | ast.AsyncFunctionDef) -> list[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Functions defined directly in ``func`` (at any block depth, not inside another scope)."""
    found: list[ast.FunctionDef | ast.AsyncFunctionDef] = []
    stack: list[ast.AST] = list(func.body)
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append(node)
        elif not isinstance(node, (ast.Lambda, ast.ClassDef)):
            stack.extend(ast.iter_child_nodes(node))
    return found


def asserts(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether the function's own body, or a nested function it surely runs, asserts (module docstring)."""
    own = list(_own_nodes(func))
    for node in own:
        if isinstance(node, ast.Assert):
            return True
        if isinstance(node, ast.Call) and _is_asserting_call(node):
            return True
    run = _run_names(own)
    return any(asserts(nested) for nested in _nested_functions(func) if nested.name in run)


def test_functions(tree: ast.Module) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """The functions pytest collects as tests from a module."""
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            yield node
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith("test"):
                    yield item


def offenders(source: str, filename: str = "<test>") -> list[tuple[int, str]]:
    """(line, name) of every test function in `source` without an assertion."""
    tree = ast.parse(source, filename)
    return [(f.lineno, f.name) for f in test_functions(tree) if not asserts(f)]


def test_files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("test_*.py") if ".venv" not in p.parts)
        else:
            yield path


def main(argv: list[str]) -> int:
    paths = [Path(a) for a in argv] or [Path("tests")]
    found = 0
    for file in test_files(paths):
        for line, name in offenders(file.read_text(), str(file)):
            print(f"{file}:{line}: {name} asserts nothing (assert, pytest.raises or an assert_* helper)")
            found += 1
    if found:
        print(f"{found} test function(s) without an assertion", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
