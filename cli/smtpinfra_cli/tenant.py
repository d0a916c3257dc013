"""`smtp-infra tenant erase TENANT ADDRESS`: GDPR erasure of one recipient address of one tenant.

Every running MTA pod that serves the tenant erases the address at once (its suppression list keeps
only a salted hash, so the address is never mailed again). A pod that is down or does not confirm
is named and the command exits 1: run it again until every pod confirmed. Then the command files an
erasure-request Secret in the tenant's namespace, which the operator carries out on the campaign
ledgers too (a campaign's SQLite ledger is reachable only from a pod mounting its claim), and waits
for the operator to report it done (`--wait`, 0: do not wait).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from smtpinfra_kube import KubeApi

app = typer.Typer(help="Tenants: GDPR erasure of an address.", no_args_is_help=True)


@app.command("erase")
def erase(
    tenant: Annotated[str, typer.Argument(help="Tenant name.")],
    address: Annotated[str, typer.Argument(help="The recipient address to erase.")],
    kubeconfig: Annotated[Path | None, typer.Option(help="Kubeconfig; in-cluster config when unset.")] = None,
    wait: Annotated[float, typer.Option(min=0, help="Seconds to wait for the operator to erase the campaign "
                                                    "ledgers (0: file the request and return).")] = 120,
) -> None:
    """Erase ADDRESS from what the tenant's MTA pods hold, keeping only its salted hash as a suppression."""
    if "@" not in address or any(c in address for c in "\r\n\0"):
        typer.echo(f"not an address: {address!r}", err=True)
        raise typer.Exit(2)
    from smtpinfra_kube import Client, ConfigError, KubeConfig
    from smtpinfra_operator.campaigns.erasure import erase as erase_everywhere
    from smtpinfra_operator.campaigns.erasure import file_request

    try:
        kube = Client(KubeConfig.load(kubeconfig))
        report = asyncio.run(erase_everywhere(kube, tenant, address))
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
    namespace, name = asyncio.run(file_request(kube, tenant, [address]))
    typer.echo(f"campaign ledgers: erasure requested as secret {namespace}/{name}")
    if wait:
        status = asyncio.run(_await_request(kube, namespace, name, wait))
        if not status.startswith("erased "):
            typer.echo(f"campaign ledgers NOT erased yet ({status or 'the operator has not seen the request'}):"
                       f" it goes on; watch secret {namespace}/{name}", err=True)
            raise typer.Exit(1)
        typer.echo(f"campaign ledgers: {status}")


async def _await_request(kube: KubeApi, namespace: str, name: str, wait: float) -> str:
    """The request's status once the operator says `erased`, or the last one seen when `wait` ran out."""
    from smtpinfra_operator.campaigns.erasure import request_status

    deadline = time.monotonic() + wait
    while True:
        status = await request_status(kube, namespace, name)
        if status.startswith("erased ") or time.monotonic() > deadline:
            return status
        await asyncio.sleep(1)
