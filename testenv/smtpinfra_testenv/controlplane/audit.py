"""The API server's audit logging: policy and log location, so tests count the requests of each client."""

from __future__ import annotations

from pathlib import Path

import yaml

from .kubeconfigs import write_file

AUDIT_LOG = Path("logs") / "audit.log"
"""The API server's audit log in the state dir: one JSON line per request (Metadata level), with
the client's user agent, so tests and benches count the requests a component made."""
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        # Node heartbeats and health probes: many, and nobody's requests worth counting.
        {"level": "None", "resources": [{"group": "coordination.k8s.io", "resources": ["leases"]}]},
        {"level": "None", "nonResourceURLs": ["/healthz*", "/readyz*", "/livez*", "/version"]},
        {"level": "Metadata"},
    ],
}


def audit_policy(sd: Path) -> Path:
    path = sd / "audit-policy.yaml"
    write_file(path, yaml.safe_dump(AUDIT_POLICY), 0o644)
    return path


