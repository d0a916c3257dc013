"""`up` and `down`: start the components in order and wait until the cluster is usable; stop them."""

from __future__ import annotations

import functools
import ipaddress
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

from smtpinfra_testenv import pki as pkimod

from .components import command_lines, component_env
from .handle import ControlPlane
from .kubeconfigs import first_service_ip, write_kubeconfigs
from .layout import (
    COMPONENTS,
    NODE_NAME_PREFIX,
    POD_CIDR,
    POD_RUNNER,
    PORTS,
    STATE_ENTRIES,
    ControlPlaneError,
    ensure_binaries,
    flock,
    resolve_state_dir,
)
from .processes import alive, pick_ports, spawn, terminate
from .readiness import AdminApi, health_url, http_ok, node_body, node_ready, wait_healthy
from .state import State

log = logging.getLogger(__name__)
def handle(sd: Path, bin_dir: Path, st: State) -> ControlPlane:
    return ControlPlane(
        kubeconfig=sd / "kubeconfig",
        server=f"https://127.0.0.1:{st.ports['kube-apiserver']}",
        bin_dir=bin_dir,
        state_dir=sd,
        pod_cidr=st.pod_cidr,
        service_cidr=st.service_cidr,
        node_names=tuple(f"{NODE_NAME_PREFIX}{i}" for i in range(st.nodes)),
    )


def up(
    state_dir: Path | None = None, *, nodes: int = 1, timeout: float = 180.0, run_pods: bool = False
) -> ControlPlane:
    """Start (or find already running) the control plane of ``state_dir`` and wait until usable.

    Usable means: /readyz is ok, every simulated node is Ready without NoSchedule taints, and the
    ``default`` ServiceAccount exists (pods are rejected until it does). Idempotent: a healthy
    running control plane is returned as is; a partly running one is restarted as a whole with
    its existing data. ``nodes`` only ever adds simulated nodes. ``run_pods`` also starts the local
    pod runner (detached, logs in ``logs/pod-runner.log``, state in ``pod-runner/``) unless it runs.
    """
    sd = resolve_state_dir(state_dir)
    bin_dir = ensure_binaries()
    sd.mkdir(parents=True, exist_ok=True)
    with flock(sd / ".lock"):
        t0 = time.monotonic()
        st = State.load(sd)
        grew = st is not None and nodes > st.nodes
        if st is not None:
            st.nodes = max(st.nodes, nodes)
        pki = pkimod.Pki(sd / "pki")
        running = st is not None and all(alive(st.pids.get(n)) for n in COMPONENTS)
        if st is not None and running and (sd / "kubeconfig").exists():
            api = AdminApi.for_pki(f"https://127.0.0.1:{st.ports['kube-apiserver']}", pki)
            if api.ok("/readyz"):
                if grew:
                    write_kubeconfigs(sd, st, pki)
                finish(sd, st, api, time.monotonic() + timeout)
                if run_pods:
                    start_pod_runner(sd, st)
                st.save(sd)
                log.info("control plane in %s already running", sd)
                return handle(sd, bin_dir, st)
        # A pod runner that outlived a dead component is restarted with the rest: left running, it
        # would hold its state dir's lock against the new one (and talk to the old API server).
        had_runner = st is not None and alive(st.pids.get(POD_RUNNER))
        if st is not None:
            terminate(st.pids, [POD_RUNNER], grace=70.0)
            terminate(st.pids, list(reversed(COMPONENTS)), grace=10.0)
            st.pids.clear()
        else:
            # The pod CIDR is fixed when the state is created (pods keep their IPs across restarts).
            pod_cidr = os.environ.get("SMTP_INFRA_POD_CIDR", POD_CIDR)
            ipaddress.IPv4Network(pod_cidr)  # fail early on a typo, not inside kwok
            st = State(ports={}, nodes=nodes, pod_cidr=pod_cidr)
        st.ports = pick_ports([p for n in COMPONENTS for p in PORTS[n]], st.ports)
        pki = pkimod.ensure_pki(sd / "pki", first_service_ip(st.service_cidr))
        server = write_kubeconfigs(sd, st, pki)
        st.save(sd)
        cmds = command_lines(sd, bin_dir, st, pki)
        api = AdminApi.for_pki(server, pki)
        deadline = time.monotonic() + timeout
        phases: list[str] = []
        mark = time.monotonic()

        def phase(name: str) -> None:
            nonlocal mark
            now = time.monotonic()
            phases.append(f"{name} {now - mark:.1f}s")
            mark = now

        phase("prepare")
        try:
            start_components(sd, st, cmds, ["etcd"], deadline)
            phase("etcd")
            start_components(sd, st, cmds, ["kube-apiserver"], deadline, api_check=api)
            phase("kube-apiserver")
            start_components(sd, st, cmds, ["kube-controller-manager", "kube-scheduler", "kwok"], deadline)
            phase("controllers")
            finish(sd, st, api, deadline)
            phase("nodes+serviceaccount")
            if run_pods or had_runner:
                start_pod_runner(sd, st)
                phase("pod-runner")
        except BaseException:
            terminate(st.pids, [POD_RUNNER, *reversed(COMPONENTS)], grace=5.0)
            st.pids.clear()
            st.save(sd)
            raise
        st.save(sd)
        log.info("control plane in %s up after %.1fs (%s)", sd, time.monotonic() - t0, ", ".join(phases))
        return handle(sd, bin_dir, st)


def start_components(
    sd: Path,
    st: State,
    cmds: dict[str, list[str]],
    names: list[str],
    deadline: float,
    api_check: AdminApi | None = None,
) -> None:
    """Start ``names`` together and wait for all of their health endpoints."""
    for name in names:
        st.pids[name] = spawn(cmds[name], sd / "logs" / f"{name}.log", component_env(sd, name))
        st.save(sd)  # record pids at once so a crash of ours still lets `down` find them
    for name in names:
        if api_check is not None and name == "kube-apiserver":
            check: Callable[[], bool] = functools.partial(api_check.ok, "/readyz")
        else:
            check = functools.partial(http_ok, health_url(name, st.ports))
        wait_healthy(f"{name} health", check, deadline, sd, {n: st.pids[n] for n in st.pids})


def start_pod_runner(sd: Path, st: State) -> None:
    """Start the local pod runner detached (``smtp-infra testenv run-pods``) unless it already runs.

    Its processes get this interpreter's bin directory first on PATH, so ``smtp-infra`` and
    ``python3`` in pod commands are the project's venv.
    """
    if alive(st.pids.get(POD_RUNNER)):
        return
    argv = [sys.executable, "-m", "smtpinfra_testenv.cli", "run-pods", "--state-dir", str(sd)]
    env = component_env(sd, POD_RUNNER)
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([venv_bin, env.get("PATH", "/usr/local/bin:/usr/bin:/bin")])
    ready = sd / POD_RUNNER / "ready"
    ready.unlink(missing_ok=True)
    st.pids[POD_RUNNER] = spawn(argv, sd / "logs" / f"{POD_RUNNER}.log", env)
    st.save(sd)
    wait_healthy("pod runner", ready.exists, time.monotonic() + 60, sd, {POD_RUNNER: st.pids[POD_RUNNER]})


def finish(sd: Path, st: State, api: AdminApi, deadline: float) -> None:
    """Create the simulated nodes and wait for what makes the cluster usable for pods."""
    names = [f"{NODE_NAME_PREFIX}{i}" for i in range(st.nodes)]
    for name in names:
        status, body = api.request("POST", "/api/v1/nodes", node_body(name))
        if status not in (201, 409):
            raise ControlPlaneError(f"creating node {name} failed ({status}): {body}")
    watch = {n: st.pids[n] for n in COMPONENTS if n in st.pids}
    for name in names:
        wait_healthy(f"node {name} Ready", functools.partial(node_ready, api, name), deadline, sd, watch)
    wait_healthy(
        "ServiceAccount default/default",
        functools.partial(api.ok, "/api/v1/namespaces/default/serviceaccounts/default"),
        deadline,
        sd,
        watch,
    )


def down(state_dir: Path | None = None, *, purge: bool = False, grace: float = 10.0) -> None:
    """Stop all components (reverse start order); with ``purge`` also delete the state dir.

    Only processes recorded in the state dir, with matching start times, are signalled, so a pid
    reused by an unrelated process is never touched. Without ``purge`` certificates and etcd data
    stay, and the next ``up`` resumes the same cluster.
    """
    sd = resolve_state_dir(state_dir)
    if not sd.exists():
        return
    with flock(sd / ".lock"):
        st = State.load(sd)
        if st is not None:
            # The runner first (it SIGTERMs its pods' processes and waits for their grace periods).
            terminate(st.pids, [POD_RUNNER], grace=max(grace, 70.0))
            terminate(st.pids, list(reversed(COMPONENTS)), grace=grace)
            st.pids.clear()
            st.save(sd)
    if purge:
        unknown = sorted(p.name for p in sd.iterdir() if p.name.removesuffix(".tmp") not in STATE_ENTRIES)
        if unknown:
            # Guard against `down --purge --state-dir ~`: only ever delete what up created.
            raise ControlPlaneError(f"not purging {sd}: it holds files up did not create: {unknown}")
        shutil.rmtree(sd, ignore_errors=True)


