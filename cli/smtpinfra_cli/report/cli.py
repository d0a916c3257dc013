"""The `smtp-infra report` command: gather, build, render; once, or again every --interval."""

from __future__ import annotations

import json
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live

from .gather import Gatherer, StatsOptions, kube_client
from .render import render, to_json


class Output(StrEnum):
    TABLE = "table"
    JSON = "json"


app = typer.Typer(help="A summary of the cluster's smtp-infra resources and MTAs.", invoke_without_command=True)


@app.callback()
def report(
    kubeconfig: Annotated[Path | None, typer.Option(help="Kubeconfig; $KUBECONFIG or in-cluster when unset.")] = None,
    output: Annotated[Output, typer.Option("--output", "-o", help="table (rich) or json.")] = Output.TABLE,
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Refresh until interrupted.")] = False,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes with --watch.", min=1)] = 5.0,
    stats: Annotated[bool, typer.Option(help="Read each MTA pod's /stats (queue, sessions).")] = True,
    stats_token_secret: Annotated[str, typer.Option(
        help="Secret with the /stats bearer token, in the server's namespace ({server} is its name); "
             "without it /stats is asked without a token.")] = "{server}-stats-token",
) -> None:
    """Servers and their pods, pools per address, tenants against quotas, campaigns with progress."""
    gatherer = Gatherer(kube_client(str(kubeconfig) if kubeconfig else None),
                        StatsOptions(enabled=stats, token_secret=stats_token_secret))
    console = Console()
    if output is Output.JSON:
        while True:
            print(json.dumps(to_json(gatherer.gather()), sort_keys=True), flush=True)
            if not watch:
                return
            time.sleep(interval)
    if not watch:
        console.print(render(gatherer.gather()))
        return
    with Live(render(gatherer.gather()), console=console, refresh_per_second=1, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(gatherer.gather()))
        except KeyboardInterrupt:
            pass
