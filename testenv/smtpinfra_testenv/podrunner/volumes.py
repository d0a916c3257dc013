"""A pod worker's volumes: configMap, secret, downwardAPI, projected (with real tokens), PVCs."""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from pathlib import Path

from smtpinfra_kube import Obj

from .files import write_payload
from .kube import KUBE_ERRORS
from .state import NotReadyError, WorkerState

log = logging.getLogger(__name__)


class PodVolumes(WorkerState):
    """Materialises the pod's volumes under its directory, resynced from the watches."""

    def _sync_volumes(self, pod: Obj) -> None:
        try:
            for vol in pod["spec"].get("volumes") or []:
                self._sync_volume(pod, vol)
        except NotReadyError as err:
            if not self.volumes_ready:
                self.volume_error = err
                self.next_volume_sync = time.monotonic() + 1.0
            else:
                log.warning("pod %s/%s: volume resync: %s", self.namespace, self.pod_name, err.message)
            return
        self.volumes_ready = True
        self.volume_error = None

    def volume_path(self, pod: Obj, vol: Obj) -> Path:
        """Host directory that backs a volume (PVCs live outside the pod dir and survive it)."""
        if vol.get("persistentVolumeClaim"):
            return self.runner.claim_dir(self.namespace, str(vol["persistentVolumeClaim"]["claimName"]))
        if vol.get("ephemeral"):
            return self.runner.claim_dir(self.namespace, f"{self.pod_name}-{vol['name']}")
        if vol.get("hostPath"):
            return Path(vol["hostPath"]["path"])
        return self.dir / "volumes" / str(vol["name"])

    def _sync_volume(self, pod: Obj, vol: Obj) -> None:
        target = self.volume_path(pod, vol)
        name = vol["name"]
        if vol.get("configMap") is not None:
            write_payload(target, self._source_payload("configmap", vol["configMap"], 0o644))
        elif vol.get("secret") is not None:
            src = dict(vol["secret"])
            src["name"] = src.get("secretName", "")
            write_payload(target, self._source_payload("secret", src, 0o644))
        elif vol.get("downwardAPI") is not None:
            write_payload(target, self._downward_payload(pod, vol["downwardAPI"], 0o644))
        elif vol.get("projected") is not None:
            write_payload(target, self._projected_payload(pod, name, vol["projected"]))
        elif vol.get("persistentVolumeClaim") or vol.get("ephemeral"):
            target.mkdir(parents=True, exist_ok=True)
        elif vol.get("hostPath"):
            kind = vol["hostPath"].get("type", "")
            if kind == "DirectoryOrCreate":
                target.mkdir(parents=True, exist_ok=True)
            elif kind == "FileOrCreate" and not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
        else:  # emptyDir and anything unsupported: an empty directory
            if vol.get("emptyDir") is None:
                log.warning("pod %s/%s: volume %s: unsupported kind, using an empty dir",
                            self.namespace, self.pod_name, name)
            target.mkdir(parents=True, exist_ok=True)

    def _lookup(self, kind: str, name: str) -> Obj | None:
        reflector = self.runner.configmaps if kind == "configmap" else self.runner.secrets
        return reflector.get(self.namespace, name)

    def _source_data(self, kind: str, obj: Obj) -> dict[str, bytes]:
        data: dict[str, bytes] = {}
        if kind == "configmap":
            data.update({k: str(v).encode() for k, v in (obj.get("data") or {}).items()})
            data.update({k: base64.b64decode(v) for k, v in (obj.get("binaryData") or {}).items()})
        else:
            data.update({k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()})
            data.update({k: str(v).encode() for k, v in (obj.get("stringData") or {}).items()})
        return data

    def _source_payload(self, kind: str, src: Obj, default_mode: int) -> dict[str, tuple[bytes, int]]:
        """configMap/secret source -> files (all keys, or ``items`` with paths and modes)."""
        mode = int(src.get("defaultMode", default_mode))
        obj = self._lookup(kind, str(src.get("name", "")))
        if obj is None:
            if src.get("optional"):
                return {}
            raise NotReadyError("ContainerCreating", f'{kind} "{src.get("name")}" not found')
        data = self._source_data(kind, obj)
        items = src.get("items")
        if not items:
            return {k: (v, mode) for k, v in data.items()}
        out: dict[str, tuple[bytes, int]] = {}
        for item in items:
            if item["key"] not in data:
                if src.get("optional"):
                    continue
                raise NotReadyError("ContainerCreating", f'{kind} "{src.get("name")}" has no key {item["key"]!r}')
            out[str(item["path"])] = (data[item["key"]], int(item.get("mode", mode)))
        return out

    def _downward_payload(self, pod: Obj, src: Obj, default_mode: int) -> dict[str, tuple[bytes, int]]:
        mode = int(src.get("defaultMode", default_mode))
        out: dict[str, tuple[bytes, int]] = {}
        for item in src.get("items") or []:
            if item.get("fieldRef"):
                value = self._field(pod, str(item["fieldRef"]["fieldPath"]))
            elif item.get("resourceFieldRef"):
                value = self._resource_field(pod, item["resourceFieldRef"])
            else:
                continue
            out[str(item["path"])] = (value.encode(), int(item.get("mode", mode)))
        return out

    def _projected_payload(self, pod: Obj, vol_name: str, src: Obj) -> dict[str, tuple[bytes, int]]:
        mode = int(src.get("defaultMode", 0o644))
        out: dict[str, tuple[bytes, int]] = {}
        for source in src.get("sources") or []:
            if source.get("configMap") is not None:
                out.update(self._source_payload("configmap", source["configMap"], mode))
            elif source.get("secret") is not None:
                out.update(self._source_payload("secret", source["secret"], mode))
            elif source.get("downwardAPI") is not None:
                out.update(self._downward_payload(pod, {**source["downwardAPI"], "defaultMode": mode}, mode))
            elif source.get("serviceAccountToken") is not None:
                sat = source["serviceAccountToken"]
                out[str(sat["path"])] = (self._token(pod, vol_name, sat).encode(), mode)
        return out

    def _token(self, pod: Obj, vol_name: str, sat: Obj) -> str:
        """A real bound service-account token (TokenRequest), refreshed at 80% of its lifetime."""
        key = f"{vol_name}/{sat['path']}"
        cached = self.tokens.get(key)
        if cached and time.monotonic() < cached[1]:
            return cached[0]
        seconds = int(sat.get("expirationSeconds", 3600))
        sa = pod["spec"].get("serviceAccountName") or "default"
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": seconds,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.uid},
            },
        }
        if sat.get("audience"):
            body["spec"]["audiences"] = [sat["audience"]]
        try:
            resp = self.client.request(
                "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token", body=body
            )
        except KUBE_ERRORS as err:
            if cached:
                return cached[0]
            raise NotReadyError("ContainerCreating", f"service account token: {err}") from err
        token = str(resp["status"]["token"])
        self.tokens[key] = (token, time.monotonic() + seconds * 0.8)
        return token

    def _field(self, pod: Obj, path: str) -> str:
        meta = pod["metadata"]
        if path.startswith(("metadata.labels[", "metadata.annotations[")):
            group, rest = path.split("[", 1)
            key = rest.rstrip("]").strip("'\"")
            return str((meta.get(group.split(".")[1]) or {}).get(key, ""))
        if path in ("metadata.labels", "metadata.annotations"):
            values = meta.get(path.split(".")[1]) or {}
            return "\n".join(f"{k}={json.dumps(str(v))}" for k, v in sorted(values.items()))
        simple = {
            "metadata.name": self.pod_name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": str(pod["spec"].get("nodeName", "")),
            "spec.serviceAccountName": str(pod["spec"].get("serviceAccountName", "")),
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path not in simple:
            raise NotReadyError("CreateContainerConfigError", f"unsupported fieldRef {path}")
        return simple[path]

    def _resource_field(self, pod: Obj, ref: Obj) -> str:
        """requests/limits of a container; unset limits report 'node allocatable' as a large number."""
        cname = ref.get("containerName") or pod["spec"]["containers"][0]["name"]
        spec: Obj = next((c for c in pod["spec"]["containers"] if c["name"] == cname), {})
        group, _, res = str(ref["resource"]).partition(".")
        value = ((spec.get("resources") or {}).get(group) or {}).get(res)
        if value is None:
            return str(os.cpu_count() or 1) if res == "cpu" else str(os.sysconf("SC_PAGE_SIZE") *
                                                                        os.sysconf("SC_PHYS_PAGES"))
        return str(value)
