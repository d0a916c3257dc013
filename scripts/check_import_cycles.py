"""Fail when the project's modules import each other in a cycle (run by `make lint`).

import-linter's contracts cover the layering between packages; its ``acyclic_siblings``
contract compares whole sub-packages, which also refuses a package that merely uses a module
that uses another of its modules. What must hold is narrower and exact: no cycle among
modules. So this reads the import graph import-linter builds (grimp) and looks for strongly
connected components. TYPE_CHECKING imports count: a cycle for the type checker is still one.

Usage: check_import_cycles.py [PACKAGE ...]  (default: the project's packages)
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping

import grimp

PACKAGES = (
    "smtpinfra_api", "smtpinfra_kube", "smtpinfra_operator", "smtpinfra_mta", "smtpinfra_cli", "smtpinfra_testenv",
    "smtpinfra_pulumi", "smtpinfra_campaign",
)

#: Cycles known today (none). Should one ever have to be allowed, list it here; a listed cycle
#: that no longer exists fails the check, so the allowance cannot outlive it.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()


def cycles(edges: Mapping[str, Iterable[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(edges.get(root, ())))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, todo = work[-1]
            if todo:
                nxt = todo.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return sorted(found, key=sorted)


def problems(found: list[frozenset[str]], known: Iterable[frozenset[str]]) -> list[str]:
    """What to report: new cycles, and allowances whose cycle is gone."""
    known = list(known)
    out = [f"import cycle: {' -> '.join(sorted(c))}" for c in found if c not in known]
    out += [f"listed as a known cycle but gone (delete it from KNOWN_CYCLES): {', '.join(sorted(c))}"
            for c in known if c not in found]
    return out


def main(argv: list[str]) -> int:
    packages = argv or list(PACKAGES)
    graph = grimp.build_graph(*packages)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    report = problems(cycles(edges), KNOWN_CYCLES if not argv else ())
    for line in report:
        print(line, file=sys.stderr)
    if not report:
        print(f"no import cycles among the modules of {', '.join(packages)}"
              f" ({len(KNOWN_CYCLES)} known cycles allowed)" if not argv else "no import cycles")
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
