"""`smtp-infra campaign send`: the command the Campaign controller's Job runs.

Settings come from the environment the Job sets (contract with the controller): SMTP_HOST,
SMTP_PORT, SMTP_USERNAME, SMTP_PASSWORD, SMTP_TLS (none|starttls|implicit),
SMTP_INFRA_UNSUBSCRIBE_KEY_FILE, SMTP_INFRA_UNSUBSCRIBE_URL and SMTP_INFRA_LEDGER_DSN (overrides
--ledger). Optional: SMTP_TLS_CA_FILE (CA bundle for the listener's certificate) and
SMTP_TLS_VERIFY=false (skip verification, for listeners with a self-signed certificate),
SMTP_TLS_SERVER_NAME (the name the certificate is verified for, when SMTP_HOST is not it),
SMTP_INFRA_RECIPIENTS_DIR (where the recipients volume is mounted).
Exit codes: 0 done (or the Campaign deleted), 2 bad input that stops the campaign, 1 anything else.

`smtp-infra campaign erase-ledger`: the command of the operator's ledger-erasure Job (GDPR erasure
of addresses from a campaign's SQLite ledger, which only a pod mounting its claim can reach).
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Annotated

import typer

from .sources import RECIPIENTS_DIR

app = typer.Typer(help="Campaign sending.", no_args_is_help=True)

DEFAULT_LEDGER = "sqlite:////var/lib/smtp-infra/campaign/ledger.db"


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        typer.echo(f"environment variable {name} is required", err=True)
        raise typer.Exit(2)
    return value


DEFAULT_CONNECTIONS = 16
"""bench/campaign_send.py, 20,000 recipients, 2 cores: 4 connections handed over 748 msg/s (the sender was
the bottleneck: end to end the same), 8 about 1,050, 16 1,312 (the MTA alone: 1,322), 32 1,449."""


@app.command("send")
def send(
    namespace: Annotated[str, typer.Option(help="Namespace of the Campaign.")],
    name: Annotated[str, typer.Option(help="Name of the Campaign.")],
    ledger: Annotated[str, typer.Option(help="sqlite:////path.db or postgresql://… (SMTP_INFRA_LEDGER_DSN wins).")]
    = DEFAULT_LEDGER,
    lease: Annotated[str | None, typer.Option(help="Lease name; campaign-<name> when unset.")] = None,
    kubeconfig: Annotated[str | None, typer.Option(help="Kubeconfig; in-cluster config when unset.")] = None,
    connections: Annotated[int, typer.Option(
        min=1, max=64, help="SMTP connections in parallel; each has one message waiting for the MTA's durable "
        "commit at a time, so they set the rate the sender can reach.")] = DEFAULT_CONNECTIONS,
    identity: Annotated[str | None, typer.Option(help="Lease holder identity; host name and pid when unset.")]
    = None,
) -> None:
    """Render and submit a Campaign's messages exactly once per recipient."""
    from .kube import KubeApi
    from .ledger import open_ledger
    from .sender import CampaignSender, SenderSettings
    from .submission import SmtpSettings, TlsMode

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        tls = TlsMode(_env("SMTP_TLS", "starttls"))
    except ValueError:
        typer.echo("SMTP_TLS must be none, starttls or implicit", err=True)
        raise typer.Exit(2) from None
    smtp = SmtpSettings(
        host=_env("SMTP_HOST"), port=int(_env("SMTP_PORT")), username=os.environ.get("SMTP_USERNAME"),
        password=os.environ.get("SMTP_PASSWORD"), tls=tls,
        verify=os.environ.get("SMTP_TLS_VERIFY", "true").lower() not in ("false", "0", "no"),
        ca_file=os.environ.get("SMTP_TLS_CA_FILE") or None,
        tls_name=os.environ.get("SMTP_TLS_SERVER_NAME") or None,
    )
    key_file = os.environ.get("SMTP_INFRA_UNSUBSCRIBE_KEY_FILE")
    if not key_file:
        typer.echo("SMTP_INFRA_UNSUBSCRIBE_KEY_FILE is required (the server's unsubscribe key)", err=True)
        raise typer.Exit(2)
    settings = SenderSettings(
        namespace=namespace, name=name, smtp=smtp, unsubscribe_key=Path(key_file).read_bytes().strip(),
        unsubscribe_url=os.environ.get("SMTP_INFRA_UNSUBSCRIBE_URL") or None, lease=lease,
        connections=connections,
        recipients_dir=Path(os.environ.get("SMTP_INFRA_RECIPIENTS_DIR") or RECIPIENTS_DIR),
    )
    if identity:
        settings.identity = identity
    store = open_ledger(os.environ.get("SMTP_INFRA_LEDGER_DSN") or ledger)
    try:
        code = asyncio.run(CampaignSender(settings, KubeApi(kubeconfig), store).run())
    finally:
        store.close()
    raise typer.Exit(code)


@app.command("erase-ledger")
def erase_ledger(
    campaign: Annotated[str, typer.Option(help="The Campaign's uid (the ledger's key).")],
    addresses_file: Annotated[Path, typer.Option(help="The addresses to erase, one per line.")],
    ledger: Annotated[str, typer.Option(help="sqlite:////path.db or postgresql://….")] = DEFAULT_LEDGER,
) -> None:
    """Remove every listed address from one campaign's ledger (rows deleted, their bytes overwritten)."""
    from .ledger import open_ledger

    try:
        text = addresses_file.read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        typer.echo(f"cannot read {addresses_file}: {error}", err=True)
        raise typer.Exit(2) from error
    addresses = list(dict.fromkeys(line.strip() for line in text.splitlines() if "@" in line))
    store = open_ledger(ledger)
    try:
        rows = sum(store.erase(address, [campaign]) for address in addresses)
    finally:
        store.close()
    typer.echo(f"erased {rows} ledger rows of {len(addresses)} addresses from campaign {campaign}")
