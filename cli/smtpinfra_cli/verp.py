"""`smtp-infra verp rotate`: a new VERP key for an SmtpServer, the old one still accepted.

The operator creates the server's ``<server>-verp`` Secret once and never rewrites it; rotating is a
deliberate act of the platform engineer (like ``cmctl renew``), so it is a command rather than a spec
field a GitOps sync could replay. The replace carries the resourceVersion it read: two rotations at
once cannot silently lose a key.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Annotated

import typer

from smtpinfra_operator.builders import verp

app = typer.Typer(help="VERP return-path keys of SmtpServers.", no_args_is_help=True)

_ATTEMPTS = 5


@app.command("rotate")
def rotate(
    server: Annotated[str, typer.Argument(help="SmtpServer name.")],
    namespace: Annotated[str, typer.Option("--namespace", "-n", help="SmtpServer namespace.")] = "default",
    kubeconfig: Annotated[Path | None, typer.Option(help="Kubeconfig; in-cluster config when unset.")] = None,
) -> None:
    """Make a new signing key; the current one becomes 'previous' and still verifies bounces.

    The MTAs pick the Secret up on their next config reload (the mounted files change within about a
    minute); until every replica has it, a bounce for mail signed with the new key can reach a replica
    that does not know it yet, so rotate when the old key is suspected, not on a tight schedule. Mail
    signed with the key before 'previous' no longer matches after this rotation.
    """
    from smtpinfra_kube import ApiException, Client, KubeConfig

    kube = Client(KubeConfig.load(kubeconfig), start_informers=False)

    name = verp.secret_name(server)
    path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
    for _ in range(_ATTEMPTS):
        try:
            existing = kube.request("GET", path)
        except ApiException as exc:
            if exc.status == 404:
                typer.echo(f"Secret {namespace}/{name} not found: is SmtpServer {namespace}/{server} reconciled?",
                           err=True)
                raise typer.Exit(1) from exc
            raise
        now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        try:
            kube.request("PUT", path, body=verp.rotated(existing, verp.new_key(), now))
        except ApiException as exc:
            if exc.status == 409:  # changed since we read it: read again
                continue
            raise
        typer.echo(f"rotated VERP key of {namespace}/{server} (Secret {name}); the previous key still verifies")
        return
    typer.echo(f"Secret {namespace}/{name} kept changing; nothing rotated", err=True)
    raise typer.Exit(1)
