"""What each image installs and imports: the MTA without Kopf, Kubernetes or Pulumi; the operator
without Pulumi, the test environment or a crypto library.

Building a virtualenv per extra would take minutes, so the entry points are imported in a
subprocess whose imports of the left-out packages fail, as they would in the image; and the
declared extras are read from the installed metadata and followed through every dependency.
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import textwrap

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

pytestmark = pytest.mark.packaging

#: Run in a fresh interpreter: makes imports of the blocked top-level modules fail and hides the
#: blocked distributions' metadata, imports every module of the packages and then runs
#: ``smtp-infra ARGV``, as the image's entry point does.
_PROBE = textwrap.dedent('''
    import importlib, json, pkgutil, sys

    blocked, blocked_dists, packages, argv = json.loads(sys.argv[1])

    class Blocker:
        """Refuses the packages the image does not install."""

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ImportError(f"{name} is not installed in this image", name=name)
            return None

    # Libraries look for optional dependencies in the installed metadata too (dnspython does).
    import importlib.metadata, re
    from_name = importlib.metadata.Distribution.from_name.__func__

    def hidden_from_name(cls, name):
        if re.sub(r"[-_.]+", "-", name).lower() in blocked_dists:
            raise importlib.metadata.PackageNotFoundError(name)
        return from_name(cls, name)

    importlib.metadata.Distribution.from_name = classmethod(hidden_from_name)
    for name in list(sys.modules):
        if name.split(".")[0] in blocked:
            del sys.modules[name]
    sys.meta_path.insert(0, Blocker())
    imported = []
    for package in packages:
        module = importlib.import_module(package)
        imported.append(package)
        for info in pkgutil.walk_packages(module.__path__, package + "."):
            if info.name.endswith(".__main__"):
                continue  # runs the command line on import
            importlib.import_module(info.name)
            imported.append(info.name)
    print(json.dumps(imported), flush=True)
    leaked = sorted(n for n in sys.modules if n.split(".")[0] in blocked)
    assert not leaked, leaked
    if argv:
        from smtpinfra_cli.app import main
        sys.argv = ["smtp-infra", *argv]
        main()
''')


def probe(blocked: tuple[list[str], list[str]], packages: list[str],
          argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run the probe with (modules, distributions) blocked; its first stdout line lists the modules imported."""
    import json

    return subprocess.run([sys.executable, "-c", _PROBE, json.dumps([*blocked, packages, argv])],
                          capture_output=True, text=True, timeout=120, check=False)


def not_installed_by(extra: str, *project: str) -> tuple[list[str], list[str]]:
    """Top-level modules and distributions of the dev environment that ``smtp-infra[extra]`` does not
    install, plus the given project packages."""
    keep, dev = closure(extra), closure("dev")
    modules = []
    for module, dists in importlib.metadata.packages_distributions().items():
        names = {canonicalize_name(d) for d in dists}
        if names & dev and not names & keep and module.isidentifier():
            modules.append(module)
    return sorted([*modules, *project]), sorted(dev - keep)


@pytest.mark.parametrize("argv", [["mta", "--help"], ["mta", "serve", "--help"], ["mta", "hash-password", "--help"]])
def test_mta_entry_points_run_with_only_the_mta_extra(argv):
    blocked = not_installed_by("mta", "smtpinfra_operator", "smtpinfra_api", "smtpinfra_testenv")
    assert {"kopf", "pulumi", "jinja2"} <= set(blocked[0])
    result = probe(blocked, ["smtpinfra_mta"], argv)
    assert result.returncode == 0, result.stderr
    assert "smtpinfra_mta.server" in result.stdout.splitlines()[0]
    assert "Usage: smtp-infra mta" in result.stdout


def test_operator_entry_point_runs_with_only_the_operator_extra():
    blocked = not_installed_by("operator", "smtpinfra_testenv")
    # no crypto library either: DKIM keys go through the openssl command (7-10 MB less resident memory)
    assert {"pulumi", "aiosmtpd", "dkim", "uvloop", "pytest", "cryptography", "nacl"} <= set(blocked[0])
    result = probe(blocked, ["smtpinfra_operator"], ["operator", "run", "--help"])
    assert result.returncode == 0, result.stderr
    assert "smtpinfra_operator.app" in result.stdout.splitlines()[0]
    assert "Usage: smtp-infra operator run" in result.stdout


def test_campaign_sender_runs_with_only_the_operator_extra():
    """The Campaign Job runs `smtp-infra campaign send` in the operator image."""
    blocked = not_installed_by("operator", "smtpinfra_testenv", "smtpinfra_operator")
    assert {"pulumi", "aiosmtpd", "kopf"} & set(blocked[0]) == {"pulumi", "aiosmtpd"}
    result = probe(blocked, ["smtpinfra_campaign"], ["campaign", "send", "--help"])
    assert result.returncode == 0, result.stderr
    assert "smtpinfra_campaign.sender" in result.stdout.splitlines()[0]
    assert "Usage: smtp-infra campaign send" in result.stdout


def test_the_blocker_refuses_what_it_blocks():
    """The probe can fail: the test environment's CLI does need what is blocked here."""
    result = probe((["smtpinfra_testenv"], []), ["smtpinfra_cli"], ["testenv", "status"])
    assert result.returncode == 2, result.stdout + result.stderr
    assert "needs the 'testenv' extra" in result.stderr
    assert "pip install 'smtp-infra[testenv]'" in result.stderr
    listing = probe((["smtpinfra_testenv"], []), ["smtpinfra_cli"], ["--help"])
    assert listing.returncode == 0, listing.stderr
    assert "not installed: the 'testenv' extra" in listing.stdout


def closure(extra: str | None) -> set[str]:
    """Distributions ``smtp-infra[extra]`` installs, following the installed metadata."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [("smtp-infra", frozenset({extra} if extra else ()))]
    while todo:
        dist, extras = todo.pop()
        for line in importlib.metadata.requires(dist) or []:
            req = Requirement(line)
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras or {""}):
                continue
            name = canonicalize_name(req.name)
            key = f"{name}[{','.join(sorted(req.extras))}]"
            if key in seen:
                continue
            seen.add(key)
            todo.append((name, frozenset(req.extras)))
    return {k.split("[")[0] for k in seen}


def test_mta_extra_installs_neither_kopf_nor_kubernetes_nor_pulumi():
    installed = closure("mta")
    assert {"aiosmtpd", "dkimpy", "dnspython", "pydantic"} <= installed
    assert not {"kopf", "kubernetes", "pulumi", "pulumi-kubernetes"} & installed


def test_operator_extra_installs_neither_pulumi_nor_test_tools():
    installed = closure("operator")
    assert {"kopf", "httpx", "pydantic"} <= installed
    # no `kubernetes` package either: smtpinfra_kube is the operator's, the sender's and Kopf's login's client
    assert not {"kubernetes", "pulumi", "pulumi-kubernetes", "pytest", "hypothesis", "import-linter"} & installed


def test_base_is_minimal_and_dev_has_everything():
    assert not {"kopf", "pulumi", "aiosmtpd"} & closure(None)
    assert {"kopf", "pulumi", "aiosmtpd", "pytest", "import-linter"} <= closure("dev")
