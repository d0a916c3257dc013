"""What a pod worker knows about its pod and containers, shared by the worker's layers.

The worker is built in layers, one concern per module (volumes, processes, status, probes,
supervision, the loop); this base declares the state they share and what they need of the runner.
"""

from __future__ import annotations

import subprocess
import threading
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from smtpinfra_kube import Client, Informer, Obj

from .config import RunnerConfig
from .ipalloc import IpAllocator

#: The kubelet's grace period when a pod sets none.
KUBELET_DEFAULT_GRACE = 30
#: How often a worker steps its pod when nothing wakes it (probes, crash back-off, volume resync).
TICK = 0.25


class NotReadyError(Exception):
    """A pod cannot start yet (missing ConfigMap/Secret/claim); ``reason`` goes into the status."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def now_rfc3339() -> str:
    """Now as the API server writes times (RFC 3339, UTC, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Probe:
    """One probe of a running container: when it runs next and its consecutive results."""

    spec: Obj
    started: float
    next_at: float = 0.0
    successes: int = 0
    failures: int = 0
    passed: bool = False  # readiness/startup: current verdict

    def __post_init__(self) -> None:
        self.next_at = self.started + float(self.spec.get("initialDelaySeconds", 0))

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds", 10))

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds", 1))


@dataclass
class Container:
    """One (init) container of the pod: its process, restarts and the state reported for it."""

    spec: Obj
    init: bool = False
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)
    started_at: str | None = None
    started_mono: float = 0.0
    restart_count: int = 0
    crashes: int = 0  # consecutive, for the backoff
    next_start: float = 0.0
    state: Obj = field(default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}})
    last_state: Obj = field(default_factory=dict)
    ready: bool = False
    done: bool = False  # finished for good (init succeeded, or restartPolicy says no restart)
    exit_code: int | None = None
    readiness: Probe | None = None
    liveness: Probe | None = None
    startup: Probe | None = None
    kill_reason: str | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class RunnerHost(Protocol):
    """What a pod worker needs of the runner that started it."""

    @property
    def client(self) -> Client: ...
    @property
    def config(self) -> RunnerConfig: ...
    @property
    def ips(self) -> IpAllocator: ...
    @property
    def lock(self) -> AbstractContextManager[Any]: ...
    @property
    def node_ips(self) -> dict[str, str]: ...
    @property
    def stopping(self) -> threading.Event: ...
    @property
    def configmaps(self) -> Informer: ...
    @property
    def secrets(self) -> Informer: ...
    @property
    def hosts_version(self) -> int: ...

    def service_hosts(self, namespace: str) -> list[str]: ...

    def pod_dir(self, uid: str) -> Path: ...
    def claim_dir(self, namespace: str, claim: str) -> Path: ...
    def log_path(self, namespace: str, pod: str, container: str) -> Path: ...
    def worker_done(self, uid: str) -> None: ...


class WorkerState:
    """The state of one pod worker; the layers above it read and change it under ``_lock``."""

    runner: RunnerHost
    client: Client
    pod: Obj
    uid: str
    namespace: str
    pod_name: str
    gone: bool
    _lock: threading.Lock
    _wake: threading.Event
    _resync: bool
    dir: Path
    pod_ip: str
    host_ip: str
    start_time: str
    init_containers: list[Container]
    containers: list[Container]
    volumes_ready: bool
    volume_error: NotReadyError | None
    next_volume_sync: float
    tokens: dict[str, tuple[str, float]]
    last_status: Obj | None
    transitions: dict[str, tuple[str, str]]
    failed_phase: str | None
    hosts_seen: int

    def _kill_for_restart(self, pod: Obj, c: Container, why: str) -> None:
        """Terminate ``c`` so that it is started again (supervision implements it)."""
        raise NotImplementedError
