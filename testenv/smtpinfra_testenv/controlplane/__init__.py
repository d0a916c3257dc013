"""A real, local Kubernetes control plane for the tests and the demo.

There is no Docker and no cluster on the machines this project is developed on, so ``up`` runs
the genuine components as plain processes on loopback: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok (which plays the kubelet for simulated nodes so
pods get scheduled and become Running). The binaries are built once from pinned Go modules by
``testenv/build-controlplane.sh`` into a cache outside the repository; starting them takes seconds.

Everything a control plane needs to be found again (ports, pids, certificates, etcd data,
kubeconfigs, logs) lives in one state directory, so ``down``/``status`` work from another process
and a second ``up`` resumes the same cluster with its data.

Pod IPs are loopback addresses (``POD_CIDR``, 127.65.0.0/16), checked against v1.36.3: the API
server accepts them in pod status (kwok writes them, pods go Running), but Endpoints and
EndpointSlices refuse every 127.0.0.0/8 address ("may not be in the loopback range"), so a
Service selecting such pods gets no endpoints: kube-controller-manager runs without its endpoint
controllers, which could only fail and retry. Clients connect to pod IPs directly. For the same
reason the API server runs with ``--endpoint-reconciler-type=none`` (its own address is 127.0.0.1).

The package has one concern per module: ``layout`` (binaries, state dirs, the Kubernetes version,
constants), ``handle`` (the ``ControlPlane`` given to callers, ``attach``), ``state`` (state.json),
``processes`` (process supervision, ports), ``readiness`` (health checks, waiting), ``kubeconfigs``
(kubeconfigs from the PKI of ``smtpinfra_testenv.pki``), ``audit`` (audit logging), ``components``
(command lines), ``lifecycle`` (``up``/``down``) and ``status``. The public names are re-exported here.
"""

from __future__ import annotations

from .audit import AUDIT_LOG, AUDIT_POLICY
from .handle import ControlPlane, attach
from .layout import (
    ALL_BINARIES,
    BUILD_SCRIPT,
    COMPONENTS,
    KWOK_NODE_ANNOTATION,
    KWOK_STAGES,
    NODE_IP,
    NODE_NAME_PREFIX,
    POD_CIDR,
    POD_RUNNER,
    REQUIRED_BINARIES,
    SA_ISSUER,
    SERVICE_CIDR,
    ControlPlaneError,
    KubectlError,
    cache_root,
    default_bin_dir,
    default_state_dir,
    ensure_binaries,
    k8s_version,
    wait_until,
)
from .lifecycle import down, up
from .status import ComponentStatus, Status, status

__all__ = [
    "ALL_BINARIES", "AUDIT_LOG", "AUDIT_POLICY", "BUILD_SCRIPT", "COMPONENTS", "KWOK_NODE_ANNOTATION", "KWOK_STAGES",
    "NODE_IP", "NODE_NAME_PREFIX", "POD_CIDR", "POD_RUNNER", "REQUIRED_BINARIES", "SA_ISSUER", "SERVICE_CIDR",
    "ComponentStatus", "ControlPlane", "ControlPlaneError", "KubectlError", "Status", "attach", "cache_root",
    "default_bin_dir", "default_state_dir", "down", "ensure_binaries", "k8s_version", "status", "up", "wait_until",
]
