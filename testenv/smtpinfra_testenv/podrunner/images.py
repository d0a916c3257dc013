"""Which pods the runner (not kwok) runs, and the ENTRYPOINT/CMD of our images."""

from __future__ import annotations

import json
import os

from smtpinfra_kube import Obj

DEFAULT_IMAGE_PREFIXES = ("smtp-infra/",)


#: Comma-separated image prefixes of pods run locally (read by the runner and by ``up`` for kwok).
IMAGE_PREFIXES_ENV = "SMTP_INFRA_LOCAL_IMAGES"


#: ENTRYPOINT and CMD of our images (from their Dockerfiles), used when a container sets no
#: command (and, for CMD, no args), exactly as a container runtime would.
IMAGE_DEFAULTS: dict[str, tuple[list[str], list[str]]] = {
    "smtp-infra/mta": (["smtp-infra", "mta"], ["serve", "--config", "/etc/smtp-infra/mta.yaml"]),
}


def image_prefixes_from_env() -> tuple[str, ...]:
    """The configured local image prefixes (``$SMTP_INFRA_LOCAL_IMAGES``), else the default."""
    raw = os.environ.get(IMAGE_PREFIXES_ENV, "")
    prefixes = tuple(p.strip() for p in raw.split(",") if p.strip())
    return prefixes or DEFAULT_IMAGE_PREFIXES


def is_local_pod(pod: Obj, prefixes: tuple[str, ...]) -> bool:
    """Whether the runner (not kwok) handles this pod: its FIRST container's image is ours."""
    containers = pod.get("spec", {}).get("containers") or []
    return bool(containers) and str(containers[0].get("image", "")).startswith(prefixes)


def kwok_image_expression(prefixes: tuple[str, ...]) -> str:
    """The gojq selector key that is true for pods of these images (used in kwok's stages)."""
    tests = " or ".join(f"startswith({json.dumps(p)})" for p in prefixes)
    return f".spec.containers.[0].image | ({tests})" if len(prefixes) > 1 else f".spec.containers.[0].image | {tests}"
