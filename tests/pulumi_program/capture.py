"""Run a Pulumi program under Pulumi's runtime mocks and keep what it declares, inputs resolved.

A real `pulumi up` cannot run here (no language host), so the tests drive the program through
`pulumi.runtime.set_mocks`: every resource the program registers reaches `Recorder.new_resource`
with its inputs resolved, which is exactly what the engine would send to the provider.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pulumi

ROOT = Path(__file__).resolve().parents[2]


class Recorder(pulumi.runtime.Mocks):
    """Records every resource the program registers and echoes its inputs as outputs."""

    def __init__(self) -> None:
        self.resources: list[pulumi.runtime.MockResourceArgs] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[Any, Any], list[tuple[str, str]] | None]:
        return {}, None

    def of_type(self, suffix: str) -> list[pulumi.runtime.MockResourceArgs]:
        """Registered resources whose type token ends with `suffix` (e.g. ":SmtpServer")."""
        return [r for r in self.resources if r.typ.endswith(suffix)]


def load_stack_module() -> ModuleType:
    """pulumi/stack.py as a module (the program directory is not a package)."""
    name = "smtpinfra_pulumi_stack"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "pulumi" / "stack.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def run(program: Callable[[], list[pulumi.Resource]]) -> Recorder:
    """Run `program` under fresh mocks; return the recorder once every declared resource resolved."""
    # A fresh event loop: other tests' asyncio.run() leave none behind, and Pulumi's runtime
    # binds its futures to the loop current when the mocks are set.
    asyncio.set_event_loop(asyncio.new_event_loop())
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, preview=False)
    resolved: list[bool] = []

    @pulumi.runtime.test  # type: ignore[untyped-decorator]
    def body() -> pulumi.Output[Any]:
        declared = program()
        return pulumi.Output.all(*[r.urn for r in declared]).apply(lambda _: resolved.append(True))

    body()
    # the callback runs only once every urn resolved: an unknown input would leave it unrun
    assert resolved == [True], "the program's outputs never resolved"
    return recorder
