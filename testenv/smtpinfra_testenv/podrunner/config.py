"""What the runner needs to start; every field but the first two has a default."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .images import image_prefixes_from_env
from .ipalloc import DEFAULT_POD_CIDR


@dataclass
class RunnerConfig:
    """What the runner needs; every field but the first two has a sensible default."""

    kubeconfig: Path
    state_dir: Path
    image_prefixes: tuple[str, ...] = field(default_factory=image_prefixes_from_env)
    pod_cidr: str = DEFAULT_POD_CIDR
    #: Only pods bound to these nodes (None: any node; there is no real kubelet anywhere here).
    nodes: frozenset[str] | None = None
    #: PATH of the processes unless the pod sets one (put the venv's bin first for ``smtp-infra``).
    path: str = field(default_factory=lambda: os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"))
    #: Crash-restart backoff: base doubling up to max (the kubelet uses 10s..300s; tests want speed).
    backoff_base: float = 1.0
    backoff_max: float = 20.0
    #: Upper bound on any grace period (keeps `down` bounded).
    max_grace: float = 60.0
    #: Variables passed from the runner's own environment (as it is when a container starts) to every
    #: container that does not set them: the test clock (SMTP_INFRA_FAKE_TIME_FILE), which a real
    #: node would not have, so tests move MTA pods' time as they move the operator's.
    host_env: tuple[str, ...] = ("SMTP_INFRA_FAKE_TIME_FILE",)
