"""build-controlplane.sh says what it builds and for how long while a build runs, instead of going silent.

Compiling Kubernetes here takes minutes of CPU that parallel test sessions need, so `go` is a
stand-in (named as such): a script that takes a few seconds and writes the binary `-o` names.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from smtpinfra_testenv import controlplane as cpmod

pytestmark = pytest.mark.testenv

SCRIPT = cpmod.BUILD_SCRIPT

FAKE_GO = """#!/bin/sh
# Stand-in for the Go toolchain: `go build ... -o OUT ...` sleeps, then writes an executable OUT.
out=""
while [ $# -gt 0 ]; do
  if [ "$1" = "-o" ]; then out=$2; shift; fi
  shift
done
sleep 3
printf '#!/bin/sh\\n' > "$out"
chmod +x "$out"
"""


def _promtool(cache: Path) -> Path:
    """Where the script keeps promtool: its own directory per Prometheus version (testenv/go/promtool/go.mod)."""
    gomod = (SCRIPT.parent / "go" / "promtool" / "go.mod").read_text()
    (version,) = re.findall(r"^require github.com/prometheus/prometheus (\S+)$", gomod, re.M)
    return cache / f"promtool-{version}" / "bin" / "promtool"


def _executable(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_a_build_reports_its_steps_and_elapsed_time(tmp_path: Path) -> None:
    fake = tmp_path / "fake-go"
    fake.mkdir()
    _executable(fake / "go", FAKE_GO)
    cache = tmp_path / "cache"
    bin_dir = cache / f"controlplane-{cpmod.k8s_version()}" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok"):
        _executable(bin_dir / name, "#!/bin/sh\n")  # present: only etcd and helm are missing

    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}", "SMTP_INFRA_BUILD_PROGRESS_SECONDS": "1"}
    result = subprocess.run(["bash", str(SCRIPT), str(cache)], env=env, capture_output=True, text=True, timeout=120)

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(bin_dir)  # stdout stays the one line callers read
    log = result.stderr
    assert "to build into" in log and "etcd helm promtool" in log
    assert "building [1/3] etcd" in log and "building [2/3] helm" in log and "building [3/3] promtool (v" in log
    assert re.search(r"still building \[1/3\] etcd: 0m0[1-9]s so far", log), log
    assert re.search(r"built \[2/3\] helm in 0m0[1-9]s", log), log
    assert (bin_dir / "etcd").exists() and (bin_dir / "helm").exists() and _promtool(cache).exists()


def test_a_warm_cache_builds_nothing_and_says_little(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    bin_dir = cache / f"controlplane-{cpmod.k8s_version()}" / "bin"
    bin_dir.mkdir(parents=True)
    for name in cpmod.ALL_BINARIES:
        _executable(bin_dir / name, "#!/bin/sh\n")
    _promtool(cache).parent.mkdir(parents=True)
    _executable(_promtool(cache), "#!/bin/sh\n")
    result = subprocess.run(["bash", str(SCRIPT), str(cache)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "building" not in result.stderr and f"binaries in {bin_dir}" in result.stderr


def test_a_failed_step_is_named_with_its_time(tmp_path: Path) -> None:
    fake = tmp_path / "fake-go"
    fake.mkdir()
    _executable(fake / "go", "#!/bin/sh\necho 'go: module lookup disabled' >&2\nexit 1\n")
    cache = tmp_path / "cache"
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(["bash", str(SCRIPT), str(cache)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "go: module lookup disabled" in result.stderr
    assert re.search(r"building \[1/5\] etcd failed after 0m0\ds", result.stderr), result.stderr
