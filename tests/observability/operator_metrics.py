"""The series the operator really exposes: its runtime built without a cluster, its registry rendered.

`Runtime` registers every metric family at construction (reconciles, queues, the active gauge,
blocklists, warm-up, campaigns, tenants), so rendering its registry is what /metrics declares.
The Kubernetes client is a stand-in (named as such) that refuses every request: building the
runtime must not need the API server.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from prometheus_client import CollectorRegistry, generate_latest

from smtpinfra_kube import KubeApi
from smtpinfra_operator.runtime import Runtime
from tests.observability.promql import families


class RefusingKube:
    """A stand-in for the Kubernetes client that records and refuses every call."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def refused(*_: Any, **__: Any) -> Any:
            self.calls.append(name)
            raise AssertionError(f"building the runtime called the Kubernetes API ({name})")

        return refused


def operator_exposition() -> str:
    """The text exposition of a freshly built runtime's registry (what /metrics serves at start-up)."""
    fake = RefusingKube()
    registry = CollectorRegistry()
    Runtime(None, kube=cast(KubeApi, fake), metrics_registry=registry)
    assert fake.calls == []
    return generate_latest(registry).decode()


def operator_families() -> set[str]:
    """Series names the operator declares on /metrics."""
    return families(operator_exposition())
