"""`smtp-infra`: generate CRDs, run the operator, the MTA and the local control plane.

Each image installs one extra (``mta``, ``operator``), so subcommands import their packages
only when they run: ``smtp-infra mta …`` loads the MTA alone (no Kopf, no Kubernetes client,
no Pulumi), ``smtp-infra operator run`` loads the operator alone. ``mta`` and ``testenv`` are
whole sub-applications, loaded by name on first use; one whose extra is missing is listed with
the extra to install.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console


@dataclass(frozen=True)
class LazyApp:
    """A sub-application in another package: the module holding its Typer ``app``, and its extra."""

    module: str
    extra: str
    help: str


#: Sub-applications in other packages, added by :func:`main` only when asked for, so that
#: importing this module imports none of them.
LAZY_APPS: dict[str, LazyApp] = {
    "mta": LazyApp("smtpinfra_mta.cli", "mta", "The smtp-infra MTA."),
    "testenv": LazyApp("smtpinfra_testenv.cli", "testenv", "The local control plane."),
    "verp": LazyApp("smtpinfra_cli.verp", "operator", "VERP return-path keys of SmtpServers."),
    "tenant": LazyApp("smtpinfra_cli.tenant", "operator", "Tenants: GDPR erasure of an address."),
    "report": LazyApp("smtpinfra_cli.report.cli", "operator",
                      "A summary of the cluster's smtp-infra resources and MTAs."),
    "campaign": LazyApp("smtpinfra_campaign.cli", "operator", "Campaign sending (the Campaign Job's command)."),
}

app = typer.Typer(help="Self-hosted SMTP infrastructure on Kubernetes.", no_args_is_help=True)
crds_app = typer.Typer(help="CustomResourceDefinitions generated from the API models.", no_args_is_help=True)
operator_app = typer.Typer(help="The Kopf operator.", no_args_is_help=True)
app.add_typer(crds_app, name="crds")
app.add_typer(operator_app, name="operator")

console = Console(stderr=True)

DEFAULT_CRD_DIRS = [Path("crds"), Path("charts/smtp-infra/crds")]


@crds_app.command("generate")
def crds_generate(
    check: Annotated[bool, typer.Option("--check", help="Exit 1 if the files differ from the models.")] = False,
    output: Annotated[list[Path] | None, typer.Option("--output", "-o", help="Directory to write to.")] = None,
) -> None:
    """Write crds/*.yaml (and the chart's copy) from the pydantic models."""
    from smtpinfra_api import crdgen

    directories = output or DEFAULT_CRD_DIRS
    if check:
        stale = crdgen.stale(directories)
        if stale:
            for path in stale:
                typer.echo(f"stale: {path}", err=True)
            console.print("Run `smtp-infra crds generate` and commit the result.")
            raise typer.Exit(1)
        console.print(f"CRDs up to date in {', '.join(map(str, directories))}")
        return
    changed = crdgen.write(directories)
    for path in changed:
        console.print(f"wrote {path}")
    if not changed:
        console.print("CRDs already up to date")


@operator_app.command("run")
def operator_run(
    kubeconfig: Annotated[Path | None, typer.Option(help="Kubeconfig; in-cluster config when unset.")] = None,
    peering: Annotated[
        str | None, typer.Option(help="Kopf peering name for several replicas; standalone when unset.")
    ] = None,
    liveness: Annotated[str | None, typer.Option(help="Liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")] = None,
    priority: Annotated[int | None, typer.Option(
        help="Peering priority: the live replica with the highest one works, the others wait. Default: derived "
             "from the pod name (POD_ID) or host and the pid, so replicas differ (a tie pauses them all).")] = None,
    metrics_port: Annotated[int, typer.Option(
        envvar="SMTP_INFRA_METRICS_PORT",
        help="Port of the Prometheus metrics endpoint (/metrics, on every address); 0 turns it off.")] = 9090,
) -> None:
    """Run the operator against the cluster."""
    if kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(kubeconfig)
    from smtpinfra_operator import app as operator

    operator.run(standalone=peering is None, peering_name=peering or operator.PEERING_NAME, liveness=liveness,
                 priority=priority, metrics_port=metrics_port)


def _add_missing_extra(name: str, lazy: LazyApp, err: ImportError) -> None:
    """A stand-in for a sub-application whose dependencies are not installed: it names the extra."""

    def missing(args: Annotated[list[str] | None, typer.Argument(hidden=True)] = None) -> None:
        typer.echo(f"`smtp-infra {name}` needs the {lazy.extra!r} extra: pip install 'smtp-infra[{lazy.extra}]'"
                   f" ({err})", err=True)
        raise typer.Exit(2)

    app.command(name, help=f"{lazy.help} (not installed: the {lazy.extra!r} extra)",
                context_settings={"ignore_unknown_options": True, "allow_extra_args": True})(missing)


def add_lazy_apps(argv: list[str]) -> None:
    """Add the sub-applications the command line needs: the one named, or all for help.

    ``smtp-infra mta serve`` imports the MTA alone; ``smtp-infra operator run`` none of them;
    ``smtp-infra --help`` all that are installed (the others are listed with their extra).
    """
    first = next(iter(argv), "")
    if first in LAZY_APPS:
        names = [first]
    elif first and not first.startswith("-"):
        names = []  # a command defined here (crds, operator) or a typo Typer reports
    else:
        names = list(LAZY_APPS)
    for name in names:
        lazy = LAZY_APPS[name]
        try:
            module = importlib.import_module(lazy.module)
        except ImportError as err:
            _add_missing_extra(name, lazy, err)
        else:
            app.add_typer(module.app, name=name)


def main() -> None:
    """Console-script entry point."""
    add_lazy_apps(sys.argv[1:])
    app()
