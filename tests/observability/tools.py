"""promtool from the binary cache, and the chart rendered with helm."""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from smtpinfra_testenv.controlplane import BUILD_SCRIPT, cache_root, ensure_binaries, k8s_version

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "smtp-infra"
PROMTOOL_MODULE = BUILD_SCRIPT.parent / "go" / "promtool" / "go.mod"


def prometheus_version() -> str:
    """The github.com/prometheus/prometheus requirement of promtool's wrapper module (its one definition)."""
    match = re.search(r"^require github\.com/prometheus/prometheus (v\S+)$", PROMTOOL_MODULE.read_text(),
                      re.MULTILINE)
    assert match, f"no prometheus requirement in {PROMTOOL_MODULE}"
    return match.group(1)


def promtool() -> Path:
    """The cached promtool; built by the build script (which only builds what is missing) if absent."""
    binary = cache_root() / f"promtool-{prometheus_version()}" / "bin" / "promtool"
    if not os.access(binary, os.X_OK):
        lock = cache_root() / ".build.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            if not os.access(binary, os.X_OK):
                subprocess.run(["bash", str(BUILD_SCRIPT), str(cache_root())], check=True,
                               stdout=subprocess.DEVNULL, env={**os.environ, "SMTP_INFRA_CACHE": str(cache_root())})
    assert os.access(binary, os.X_OK), f"promtool not built at {binary}"
    return binary


def helm_template(*args: str, release: str = "smtp-infra",
                  namespace: str = "smtp-infra-system") -> list[dict[str, Any]]:
    """The chart rendered offline (``helm template``) as a list of objects."""
    helm = ensure_binaries() / "helm"
    result = subprocess.run([str(helm), "template", release, str(CHART), "--namespace", namespace,
                             "--kube-version", k8s_version().removeprefix("v"), *args],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]
