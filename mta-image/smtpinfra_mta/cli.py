"""Command line: ``smtp-infra mta serve --config FILE`` (mounted by the main CLI as ``mta``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from smtpinfra_mta.config import DEFAULT_CONFIG_PATH, ConfigError, load_config
from smtpinfra_mta.passwords import hash_password

app = typer.Typer(help="The smtp-infra MTA.", no_args_is_help=True)

_STD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``extra=`` fields become keys. Bodies and passwords are never passed in."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STD_ATTRS:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiosmtpd logs raw command lines at INFO (AUTH blobs are masked, but addresses are not): keep it quiet.
    logging.getLogger("mail.log").setLevel(logging.ERROR)


async def _serve(config: Path) -> None:
    from smtpinfra_mta.app import MtaApp
    from smtpinfra_mta.split import serve_accepting

    cfg = load_config(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if cfg.delivery.separate_process:
        await serve_accepting(cfg, config, stop)
        return
    mta = MtaApp(cfg, config)
    await mta.start(watch_config=True)
    await stop.wait()
    logging.getLogger(__name__).info("draining")
    await mta.drain(grace=30.0)


def _run(coro: Any) -> None:
    runner: Any = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop  # type: ignore[import-not-found, unused-ignore]

        runner = uvloop.run
    runner(coro)


@app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="MTA config YAML.")] = DEFAULT_CONFIG_PATH,
    log_level: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """Run the MTA until SIGTERM, then drain."""
    setup_logging(log_level)
    try:
        load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    _run(_serve(config))


@app.command(hidden=True)
def deliver(
    config: Annotated[Path, typer.Option("--config", "-c", help="MTA config YAML.")],
    fd: Annotated[int, typer.Option(help="Socket to the SMTP process.")],
    log_level: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """The delivery process of delivery.separate_process (started by 'serve', not by hand)."""
    from smtpinfra_mta.split import serve_delivering

    setup_logging(log_level)
    _run(serve_delivering(config, fd))


@app.command(hidden=True)
def receive(
    config: Annotated[Path, typer.Option("--config", "-c", help="MTA config YAML.")],
    index: Annotated[int, typer.Option(min=1, help="This receiving process's number (its spool shard).")],
    control_fd: Annotated[int, typer.Option(help="Socket to the first receiving process.")],
    listener: Annotated[list[str], typer.Option(help="KIND=FD of an inherited listening socket.")],
    log_level: Annotated[str, typer.Option(help="Log level.")] = "INFO",
) -> None:
    """A further receiving process of listeners.processes (started by 'serve', not by hand)."""
    from smtpinfra_mta.receivers import serve_receiving

    setup_logging(log_level)
    listeners: list[Any] = []
    for item in listener:
        kind, _, fd = item.partition("=")
        listeners.append((kind, int(fd)))
    _run(serve_receiving(config, index, control_fd, listeners))


@app.command("check-config")
def check_config(config: Annotated[Path, typer.Option("--config", "-c", help="MTA config YAML.")]) -> None:
    """Validate a config file and exit non-zero with the problems."""
    try:
        load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None
    typer.echo("ok")


@app.command("hash-password")
def hash_password_cmd(
    scheme: Annotated[str, typer.Option(
        help="scrypt, pbkdf2-sha256, or hmac-sha256 (only for random passwords of 20+ characters)")] = "scrypt",
) -> None:
    """Read a password from stdin and print its hash (for credentials files)."""
    password = sys.stdin.readline().rstrip("\n")
    typer.echo(hash_password(password, scheme))  # type: ignore[arg-type]


@app.command("erase")
def erase_cmd(
    tenant: Annotated[str, typer.Argument(help="Tenant whose lists hold the address.")],
    address: Annotated[str, typer.Argument(help="The address to erase (GDPR).")],
    config: Annotated[Path, typer.Option("--config", "-c", help="MTA config YAML.")] = DEFAULT_CONFIG_PATH,
) -> None:
    """Erase an address from this MTA's suppression store and spool; only its salted hash stays suppressed.

    For a local spool (the MTA stopped or on this host); a running pod is asked through POST /erase.
    """
    from smtpinfra_mta.erasure import erase, load_secret, make_hasher
    from smtpinfra_mta.outcomes import OutcomeStore
    from smtpinfra_mta.suppression import open_store

    try:
        cfg = load_config(config)
    except ConfigError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None

    async def run() -> dict[str, Any]:
        store = open_store(cfg.suppression.url)
        store.hasher = make_hasher(load_secret(cfg))
        await store.open()
        outcomes = OutcomeStore(cfg.spool.directory / "outcomes.sqlite")
        try:
            return (await erase(store, cfg.spool.directory, tenant, address, outcomes)).as_json()
        finally:
            outcomes.close()
            await store.close()

    try:
        result = asyncio.run(run())
    except ValueError as exc:
        typer.echo(f"erase: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(json.dumps(result))
