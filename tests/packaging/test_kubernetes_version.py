"""The Kubernetes version is defined once (testenv/go/kubernetes/go.mod); what repeats it must agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from smtpinfra_testenv.controlplane import default_bin_dir, k8s_version

pytestmark = pytest.mark.packaging

ROOT = Path(__file__).resolve().parents[2]
GO_MOD = ROOT / "testenv" / "go" / "kubernetes" / "go.mod"


def test_version_comes_from_the_wrapper_module():
    required = re.search(r"^require k8s\.io/kubernetes (v\S+)$", GO_MOD.read_text(), re.MULTILINE)
    assert required is not None
    assert k8s_version() == required.group(1)
    assert default_bin_dir().parent.name == f"controlplane-{required.group(1)}"


def test_staging_modules_are_pinned_to_the_same_release():
    """k8s.io/kubernetes v1.X.Y needs its staging modules (k8s.io/api, …) at v0.X.Y."""
    major_minor_patch = k8s_version().removeprefix("v1.")
    pins = re.findall(r"^\s*(k8s\.io/[\w.-]+) => k8s\.io/[\w.-]+ (v\S+)$", GO_MOD.read_text(), re.MULTILINE)
    assert len(pins) > 20
    assert {module: version for module, version in pins if version != f"v0.{major_minor_patch}"} == {}


def test_readme_states_the_same_version():
    readme = (ROOT / "README.md").read_text()
    stated = re.search(r"\*\*Kubernetes version: (\d+\.\d+)\*\* \((v[\d.]+);", readme)
    assert stated is not None
    assert stated.group(2) == k8s_version()
    assert k8s_version().startswith(f"v{stated.group(1)}.")


def test_no_other_file_repeats_the_version():
    """Scripts and tests read the version; a literal copy would drift on the next upgrade."""
    literal = k8s_version().removeprefix("v")
    offenders = []
    for path in [*ROOT.glob("scripts/*"), *ROOT.glob("testenv/*.sh"), *ROOT.glob("tests/**/*.py"), ROOT / "Makefile"]:
        if path.is_file() and path != Path(__file__) and literal in path.read_text(errors="replace"):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
