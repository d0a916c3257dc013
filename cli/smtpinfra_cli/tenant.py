"""`smtp-infra tenant erase TENANT ADDRESS`: GDPR erasure of one recipient address of one tenant.

Every running MTA pod that serves the tenant erases the address (its suppression list keeps only a
salted hash, so the address is never mailed again). A pod that is down or does not confirm is named
and the command exits 1: run it again until every pod confirmed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="Tenants: GDPR erasure of an address.", no_args_is_help=True)


@app.command("erase")
def erase(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    address: Annotated[str, typer.Argument(help="The recipient address to erase.")],
    kubeconfig: Annotated[Path | None, typer.Option(help="Kubeconfig; in-cluster config when unset.")] = None,
) -> None:
    """Erase ADDRESS from what the tenant's MTA pods hold, keeping only its salted hash as a suppression."""
    if "@" not in address or any(c in address for c in "\r\n\0"):
        typer.echo(f"not an address: {address!r}", err=True)
        raise typer.Exit(2)
    from smtpinfra_kube import Client, ConfigError, KubeConfig
    from smtpinfra_operator.campaigns.erasure import erase as erase_everywhere

    try:
        report = asyncio.run(erase_everywhere(Client(KubeConfig.load(kubeconfig)), tenant, address))
    except (LookupError, ConfigError) as error:
        typer.echo(str(error), err=True)
        raise typer.Exit(1) from error
    for pod in report.erased:
        typer.echo(f"erased on {pod}")
    for pod, why in report.failed.items():
        typer.echo(f"NOT erased on {pod}: {why}", err=True)
    if report.failed or not report.erased:
        if not report.erased and not report.failed:
            typer.echo(f"no running MTA pod serves tenant {tenant}", err=True)
        raise typer.Exit(1)
