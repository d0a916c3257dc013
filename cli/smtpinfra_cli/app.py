"""`smtp-infra`: generate CRDs, run the operator, the MTA and the local control plane.

Subcommands import their heavy dependencies lazily so that, for example, the MTA image never
loads Kopf.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from smtpinfra_mta.cli import app as mta_app
from smtpinfra_testenv.cli import app as testenv_app

app = typer.Typer(help="Self-hosted SMTP infrastructure on Kubernetes.", no_args_is_help=True)
crds_app = typer.Typer(help="CustomResourceDefinitions generated from the API models.", no_args_is_help=True)
operator_app = typer.Typer(help="The Kopf operator.", no_args_is_help=True)
app.add_typer(crds_app, name="crds")
app.add_typer(operator_app, name="operator")
app.add_typer(testenv_app, name="testenv")
app.add_typer(mta_app, name="mta")

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
) -> None:
    """Run the operator against the cluster."""
    if kubeconfig is not None:
        os.environ["KUBECONFIG"] = str(kubeconfig)
    from smtpinfra_operator import app as operator

    operator.run(standalone=peering is None, peering_name=peering or operator.PEERING_NAME, liveness=liveness,
                 priority=priority)


def main() -> None:
    """Console-script entry point."""
    app()
