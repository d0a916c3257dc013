"""A minimal kubelet for pods of OUR images, so the pod spec the operator writes is what really runs.

kwok only pretends to run pods. For pods whose first container image starts with one of the
local image prefixes (default ``smtp-infra/``, ``$SMTP_INFRA_LOCAL_IMAGES`` overrides it; kwok's
stages skip exactly those pods), this runner does what a kubelet does, with local processes:

* gives the pod an IP from its own loopback CIDR (default 127.66.0.0/16; every 127.x.y.z is
  local on Linux), derived from namespace/name so a recreated StatefulSet pod gets the same one;
* materialises volumes under ``<state>/pods/<uid>/volumes``: configMap, secret, downwardAPI and
  projected (incl. a real TokenRequest service-account token) with the kubelet's ``..data``
  symlink-swap layout, resynced from watches within a second or two of a change; emptyDir; and
  persistentVolumeClaim/ephemeral as ``<state>/pvc/<namespace>/<claim>``, which survives the pod.
  Because nothing provisions volumes here and the scheduler refuses pods with unbound claims,
  the runner binds each claim of its pods to a ``hostPath`` PersistentVolume it creates
  (label ``smtp-infra.io/pod-runner``, reclaim policy Retain, deleted again once Released);
* builds the environment (env, envFrom, fieldRef, configMapKeyRef, secretKeyRef, ``$(VAR)``
  expansion exactly like the kubelet) and runs each container's command+args (or the image's
  known ENTRYPOINT/CMD, ``IMAGE_DEFAULTS``) inside a private mount+UTS namespace where every
  volume is bind-mounted at its ``mountPath`` (read-only remount for ``readOnly``), with the pod's
  hostname and an /etc/hosts naming the pod IP and every Service with a selector (``name`` in
  the pod's namespace, ``name.ns``, ``name.ns.svc``, ``name.ns.svc.cluster.local``) mapped to one
  ready pod it selects, rewritten as pods and Services change: the stand-in for cluster DNS and
  kube-proxy (``servicedns``); stdout/stderr go to
  ``<state>/logs/<namespace>/<pod>/<container>.log``;
* reports status like the kubelet (podIP(s), hostIP, phase, containerStatuses, conditions) with
  Ready driven by the real readiness probe (httpGet, tcpSocket, exec), restarts on liveness
  failure and on crashes (restartPolicy, exponential backoff, restartCount);
* on deletion sends SIGTERM to the process group, waits up to the grace period, SIGKILLs, and
  deletes the pod object with gracePeriodSeconds=0 (the kubelet's final delete).

Deliberate simplifications: processes run as root in the host network namespace and see the
host's filesystem except where volumes are mounted (securityContext runAsUser/runAsNonRoot/
fsGroup/readOnlyRootFilesystem and resources are ignored; bind to ``$(POD_IP)``, not 0.0.0.0, or
pods collide on ports; missing mount points are created on the host, empty);
KUBERNETES_SERVICE_HOST/PORT point at the real API server address (the kubernetes Service's
ClusterIP is not routable here); no service-link env vars; init containers run in order, sidecar
(restartPolicy Always) init containers are treated as plain init containers; hostPath volumes are
bind-mounted as is; image changes of a running pod are not acted upon.

Layout: ``runner`` (the watches and the worker per pod), ``claims`` (PVCs bound to hostPath PVs),
``worker`` and its layers ``state``, ``volumes``, ``processes``, ``status``, ``probes``,
``supervision``; ``kube`` (what it catches of API access, which is ``smtpinfra_kube``), ``files`` (atomic writer),
``ipalloc`` (pod IPs), ``servicedns`` (Service names), ``images`` and ``expansion``. Every public name is
re-exported here.
"""

from __future__ import annotations

from smtpinfra_kube import ApiError, Obj

from .claims import RUNNER_LABEL
from .config import RunnerConfig
from .expansion import expand
from .files import write_payload
from .images import (
    DEFAULT_IMAGE_PREFIXES,
    IMAGE_DEFAULTS,
    IMAGE_PREFIXES_ENV,
    image_prefixes_from_env,
    is_local_pod,
    kwok_image_expression,
)
from .ipalloc import DEFAULT_POD_CIDR, IpAllocator
from .runner import PodRunner
from .worker import PodWorker

__all__ = [
    "DEFAULT_IMAGE_PREFIXES",
    "DEFAULT_POD_CIDR",
    "IMAGE_DEFAULTS",
    "IMAGE_PREFIXES_ENV",
    "RUNNER_LABEL",
    "ApiError",
    "IpAllocator",
    "Obj",
    "PodRunner",
    "PodWorker",
    "RunnerConfig",
    "expand",
    "image_prefixes_from_env",
    "is_local_pod",
    "kwok_image_expression",
    "write_payload",
]
