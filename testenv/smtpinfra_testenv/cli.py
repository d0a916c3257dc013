"""``smtp-infra testenv ...``: run the local control plane by hand (demo, debugging)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from smtpinfra_testenv import controlplane, podrunner

app = typer.Typer(
    help="Local Kubernetes control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok).",
    no_args_is_help=True,
)
_err = Console(stderr=True)

StateDir = Annotated[
    Path | None,
    typer.Option(
        "--state-dir",
        help="State directory (default: $SMTP_INFRA_STATE or ~/.cache/smtp-infra/testenv).",
        show_default=False,
    ),
]


@app.command()
def up(
    state_dir: StateDir = None,
    nodes: Annotated[int, typer.Option(min=1, help="Number of simulated (kwok) nodes.")] = 1,
    run_pods: Annotated[
        bool,
        typer.Option(
            "--run-pods",
            help="Also start the local pod runner (detached; `down` stops it), so pods of our images "
            "(smtp-infra/...) really run as local processes.",
        ),
    ] = False,
) -> None:
    """Start the control plane (or find it running) and print the kubeconfig path."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    t0 = time.monotonic()
    try:
        cp = controlplane.up(state_dir, nodes=nodes, run_pods=run_pods)
    except controlplane.ControlPlaneError as err:
        _err.print(f"[red]control plane failed to start:[/red] {err}")
        raise typer.Exit(1) from err
    nodes_text = ", ".join(cp.node_names)
    _err.print(f"[green]ready[/green] in {time.monotonic() - t0:.1f}s: {cp.server}, nodes {nodes_text}")
    _err.print(f"export KUBECONFIG={cp.kubeconfig}")
    typer.echo(str(cp.kubeconfig))


@app.command()
def down(
    state_dir: StateDir = None,
    purge: Annotated[bool, typer.Option(help="Also delete certificates, etcd data and logs.")] = False,
) -> None:
    """Stop all components; the data stays unless --purge."""
    controlplane.down(state_dir, purge=purge)
    _err.print("stopped" + (" and purged" if purge else ""))


@app.command()
def status(
    state_dir: StateDir = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show each component's pid, port and health; exit status 1 unless all are running."""
    st = controlplane.status(state_dir)
    if as_json:
        typer.echo(json.dumps(st.to_dict(), indent=2))
    else:
        table = Table(title=f"control plane in {st.state_dir}")
        for col in ("component", "running", "pid", "port", "healthy"):
            table.add_column(col)
        for c in st.components:
            table.add_row(
                c.name,
                "yes" if c.running else "[red]no[/red]",
                str(c.pid or "-"),
                str(c.port or "-"),
                "yes" if c.healthy else "[red]no[/red]",
            )
        Console().print(table)
        if st.kubeconfig:
            Console().print(f"server {st.server}  kubeconfig {st.kubeconfig}")
    if not st.running:
        raise typer.Exit(1)


@app.command()
def kubeconfig(state_dir: StateDir = None) -> None:
    """Print the admin kubeconfig path (``export KUBECONFIG=$(smtp-infra testenv kubeconfig)``)."""
    path = controlplane.status(state_dir).kubeconfig
    if path is None:
        _err.print("[red]no control plane state here; run `smtp-infra testenv up` first[/red]")
        raise typer.Exit(1)
    typer.echo(str(path))


@app.command("run-pods")
def run_pods(
    state_dir: StateDir = None,
    kubeconfig: Annotated[
        Path | None, typer.Option(help="Cluster to serve (default: the admin kubeconfig of --state-dir).")
    ] = None,
    runner_dir: Annotated[
        Path | None,
        typer.Option(help="Runner state: pod dirs, PVC data, logs (default: <state-dir>/pod-runner)."),
    ] = None,
    image_prefix: Annotated[
        list[str] | None,
        typer.Option(help=f"Image prefix of pods to run (repeatable; default ${podrunner.IMAGE_PREFIXES_ENV} "
                     f"or {','.join(podrunner.DEFAULT_IMAGE_PREFIXES)})."),
    ] = None,
    pod_cidr: Annotated[str, typer.Option(help="Loopback CIDR for pod IPs.")] = podrunner.DEFAULT_POD_CIDR,
    node: Annotated[list[str] | None, typer.Option(help="Only pods on these nodes (repeatable; default any).")] = None,
) -> None:
    """Run pods of our images as real local processes (a minimal kubelet), in the foreground."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    sd = (state_dir or controlplane.default_state_dir()).expanduser().absolute()
    config = podrunner.RunnerConfig(
        kubeconfig=kubeconfig or sd / "kubeconfig",
        state_dir=runner_dir or sd / controlplane.POD_RUNNER,
        pod_cidr=pod_cidr,
        nodes=frozenset(node) if node else None,
    )
    if image_prefix:
        config.image_prefixes = tuple(image_prefix)
    podrunner.PodRunner(config).run_forever()


if __name__ == "__main__":
    app()
