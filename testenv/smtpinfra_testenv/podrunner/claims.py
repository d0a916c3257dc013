"""PersistentVolumeClaims of our pods bound to hostPath PersistentVolumes the runner creates.

Nothing provisions volumes here and the scheduler refuses pods with unbound claims.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from smtpinfra_kube import ApiError, Client, Obj, object_key

log = logging.getLogger(__name__)

RUNNER_LABEL = "smtp-infra.io/pod-runner"


def pv_name(ns: str, claim: str) -> str:
    """The PersistentVolume backing a claim; hashed when namespace and claim make it too long."""
    base = f"pod-runner-{ns}-{claim}"
    if len(base) <= 200:
        return base
    return f"pod-runner-{hashlib.sha256(f'{ns}/{claim}'.encode()).hexdigest()[:20]}"


def claim_names(pod: Obj) -> list[str]:
    """The claims a pod uses: persistentVolumeClaim volumes and the claims of its ephemeral volumes."""
    names = []
    pod_name = pod["metadata"]["name"]
    for vol in pod.get("spec", {}).get("volumes") or []:
        if vol.get("persistentVolumeClaim"):
            names.append(str(vol["persistentVolumeClaim"]["claimName"]))
        elif vol.get("ephemeral"):
            names.append(f"{pod_name}-{vol['name']}")
    return names


def persistent_volume(ns: str, name: str, claim: Obj, directory: Path) -> Obj:
    """A Retain hostPath PersistentVolume at ``directory``, pre-bound to ``claim`` (by uid)."""
    spec = claim.get("spec") or {}
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name(ns, name), "labels": {RUNNER_LABEL: "true"},
                     "annotations": {"pod-runner.smtp-infra.io/claim": f"{ns}/{name}"}},
        "spec": {
            "capacity": {"storage": (spec.get("resources") or {}).get("requests", {}).get("storage", "1Gi")},
            "accessModes": spec.get("accessModes") or ["ReadWriteOnce"],
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.get("storageClassName") or "",
            "volumeMode": spec.get("volumeMode") or "Filesystem",
            "hostPath": {"path": str(directory), "type": "DirectoryOrCreate"},
            "claimRef": {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": ns, "name": name,
                         "uid": claim["metadata"]["uid"]},
        },
    }


class ClaimBinder:
    """One housekeeping thread: binds claims of our pods to hostPath PVs, deletes our Released PVs.

    Claims of ephemeral volumes are created after their pod; such a claim is remembered as
    pending and bound when its watch event arrives.
    """

    def __init__(self, client: Client, claim: Callable[[str, str], Obj | None],
                 claim_dir: Callable[[str, str], Path], stopping: threading.Event) -> None:
        self.client = client
        self._claim = claim
        self._claim_dir = claim_dir
        self._stopping = stopping
        self._lock = threading.Lock()
        self._tasks: queue.Queue[tuple[str, str]] = queue.Queue()
        self._pending_claims: set[tuple[str, str]] = set()
        self._thread = threading.Thread(target=self._housekeeping, name="pod-runner-housekeeping", daemon=True)

    def start(self) -> None:
        """Start the housekeeping thread (it ends when ``stopping`` is set)."""
        self._thread.start()

    def want(self, ns: str, name: str) -> None:
        """A pod of ours uses this claim: bind it (now, or when it appears)."""
        self._tasks.put(("claim", f"{ns}/{name}"))

    def on_claim(self, kind: str, claim: Obj) -> None:
        """Watch event of a claim: bind it if a pod was waiting for it; sweep after a deletion."""
        ns, name = object_key(claim)
        if kind != "DELETED" and not claim.get("spec", {}).get("volumeName"):
            with self._lock:
                pending = (ns, name) in self._pending_claims
            if pending:
                self._tasks.put(("claim", f"{ns}/{name}"))
        if kind == "DELETED":
            self._tasks.put(("sweep", ""))

    def _housekeeping(self) -> None:
        next_sweep = time.monotonic() + 5
        while not self._stopping.is_set():
            try:
                kind, arg = self._tasks.get(timeout=1.0)
            except queue.Empty:
                kind, arg = "", ""
            try:
                if kind == "claim":
                    ns, name = arg.split("/", 1)
                    self._ensure_volume(ns, name)
                if kind == "sweep" or time.monotonic() > next_sweep:
                    next_sweep = time.monotonic() + 30
                    self._sweep_volumes()
            except Exception as err:
                log.warning("housekeeping %s %s: %s", kind, arg, err)
                if kind == "claim":
                    threading.Timer(2.0, self._tasks.put, args=((kind, arg),)).start()

    def _ensure_volume(self, ns: str, name: str) -> None:
        claim = self._claim(ns, name)
        if claim is None:
            with self._lock:
                self._pending_claims.add((ns, name))  # created later (ephemeral volumes)
            return
        with self._lock:
            self._pending_claims.discard((ns, name))
        if (claim.get("spec") or {}).get("volumeName"):
            return
        directory = self._claim_dir(ns, name)
        directory.mkdir(parents=True, exist_ok=True)
        pv = persistent_volume(ns, name, claim, directory)
        pv_name = pv["metadata"]["name"]
        try:
            self.client.request("POST", "/api/v1/persistentvolumes", body=pv)
            log.info("bound claim %s/%s to PersistentVolume %s (%s)", ns, name, pv_name, directory)
        except ApiError as err:
            if err.status != 409:
                raise
            existing = self.client.request("GET", f"/api/v1/persistentvolumes/{pv_name}")
            if (existing.get("spec", {}).get("claimRef") or {}).get("uid") != claim["metadata"]["uid"]:
                # Left over from an earlier claim of the same name: replace it (data dir stays).
                self._delete_volume(pv_name)
                raise RuntimeError(f"replaced stale PersistentVolume {pv_name}") from err

    def _sweep_volumes(self) -> None:
        pvs = self.client.request("GET", "/api/v1/persistentvolumes", query=[("labelSelector", f"{RUNNER_LABEL}=true")])
        for pv in pvs.get("items") or []:
            if pv.get("status", {}).get("phase") == "Released":
                name = pv["metadata"]["name"]
                self._delete_volume(name)

    def _delete_volume(self, name: str) -> None:
        """Delete one of our PersistentVolumes; already gone is fine."""
        try:
            self.client.request("DELETE", f"/api/v1/persistentvolumes/{name}")
        except ApiError as err:
            if err.status != 404:
                raise
