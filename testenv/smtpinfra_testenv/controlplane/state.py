"""The JSON record of a control plane in its state dir (ports, pids, CIDRs, node count)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .layout import POD_CIDR, SERVICE_CIDR, STATE_VERSION


@dataclass
class State:
    """The JSON record in the state dir (``state.json``)."""

    ports: dict[str, int]
    pids: dict[str, dict[str, int]] = field(default_factory=dict)
    pod_cidr: str = POD_CIDR
    service_cidr: str = SERVICE_CIDR
    nodes: int = 1

    @staticmethod
    def load(state_dir: Path) -> State | None:
        path = state_dir / "state.json"
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if raw.get("version") != STATE_VERSION:
            return None
        return State(
            ports={k: int(v) for k, v in raw["ports"].items()},
            pids={k: {"pid": int(v["pid"]), "start": int(v["start"])} for k, v in raw.get("pids", {}).items()},
            pod_cidr=str(raw.get("pod_cidr", POD_CIDR)),
            service_cidr=str(raw.get("service_cidr", SERVICE_CIDR)),
            nodes=int(raw.get("nodes", 1)),
        )

    def save(self, state_dir: Path) -> None:
        raw = {
            "version": STATE_VERSION,
            "ports": self.ports,
            "pids": self.pids,
            "pod_cidr": self.pod_cidr,
            "service_cidr": self.service_cidr,
            "nodes": self.nodes,
        }
        tmp = state_dir / "state.json.tmp"
        tmp.write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        tmp.replace(state_dir / "state.json")

