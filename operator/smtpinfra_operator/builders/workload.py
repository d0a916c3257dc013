"""SmtpServer → the Kubernetes objects that run it (pure functions, plain dicts).

Every object carries the same labels and an ownerReference to the SmtpServer, so deleting the
server garbage-collects them, `kubectl get -l` finds them, and the operator can tell its own
objects from anybody else's.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import DkimKey, SmtpServerSpec
from smtpinfra_mta.config import LISTEN_ADDRESS_ENV

from . import unsubscribe, verp
from .mtaconfig import (
    CONFIG_DIR,
    CREDENTIALS_DIR,
    DELIVERY_HTTP_PORT,
    DKIM_DIR,
    HTTP_PORT,
    MTA_STS_PORT,
    SPOOL_DIR,
    STATS_TOKEN_FILE,
    TLS_DIR,
    headless_service_name,
    serves_mta_sts_https,
)

MANAGED_BY = "smtp-infra-operator"
COMPONENT_MTA = "mta"
DEFAULT_MTA_IMAGE = "smtp-infra/mta:0.1.0"
MTA_UID = 10025


@dataclass(frozen=True)
class Owner:
    """The SmtpServer that owns the objects."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        """A controller ownerReference (blockOwnerDeletion so foreground deletion waits)."""
        return {"apiVersion": API_VERSION, "kind": "SmtpServer", "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


# --- names ----------------------------------------------------------------------------------


def statefulset_name(server: str) -> str:
    return server


def submission_service_name(server: str) -> str:
    return f"{server}-submission"


def inbound_service_name(server: str) -> str:
    return f"{server}-inbound"


def config_map_name(server: str) -> str:
    return f"{server}-config"


def credentials_secret_name(server: str) -> str:
    return f"{server}-credentials"


def dkim_secret_name(server: str, key: DkimKey) -> str:
    """Generated DKIM key Secret of one (domain, selector); an explicit secretName wins."""
    if key.secret_name:
        return key.secret_name
    digest = hashlib.sha256(f"{key.domain}/{key.selector}".encode()).hexdigest()[:8]
    return f"{server}-dkim-{key.selector}-{digest}"


def pdb_name(server: str) -> str:
    return server


def pod_name(server: str, ordinal: int) -> str:
    return f"{server}-{ordinal}"


# --- labels ---------------------------------------------------------------------------------


def selector_labels(server: str) -> dict[str, str]:
    """Labels that select the server's pods (immutable in a StatefulSet: keep them minimal)."""
    return {"app.kubernetes.io/name": "smtp-infra-mta", "app.kubernetes.io/instance": server}


MTA_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},app.kubernetes.io/component={COMPONENT_MTA}"
"""Label selector of every object the operator makes for SmtpServers (pods included)."""


def labels(server: str) -> dict[str, str]:
    """Labels on every object of a server."""
    return {**selector_labels(server), "app.kubernetes.io/component": COMPONENT_MTA,
            "app.kubernetes.io/managed-by": MANAGED_BY, "app.kubernetes.io/part-of": "smtp-infra"}


def _meta(name: str, owner: Owner, **extra: Any) -> dict[str, Any]:
    return {"name": name, "namespace": owner.namespace, "labels": labels(owner.name),
            "ownerReferences": [owner.reference()], **extra}


# --- objects --------------------------------------------------------------------------------


def config_map(owner: Owner, data: dict[str, str]) -> dict[str, Any]:
    """The rendered MTA config, one key per replica."""
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(config_map_name(owner.name), owner),
            "data": data}


def stats_token_secret_name(server: str) -> str:
    return f"{server}-stats-token"


def stats_token_secret(owner: Owner, token: str, handoff: str) -> dict[str, Any]:
    """The server's bearer tokens: ``token`` for /stats (tenant names and usage; only the operator reads it)
    and ``handoff`` for the replicas handing each other mail (only the MTA pods use it)."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(stats_token_secret_name(owner.name), owner),
            "stringData": {"token": token, "handoff": handoff}}


def credentials_secret(owner: Owner, lines: dict[str, str]) -> dict[str, Any]:
    """`username:hash` per tenant, mounted where the config's credentials_file points."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(credentials_secret_name(owner.name), owner), "stringData": lines}


def dkim_secret(owner: Owner, key: DkimKey, private_pem: str, dns_value: str) -> dict[str, Any]:
    """A generated DKIM key. Created once and never rewritten: rotation is a new selector."""
    meta = _meta(dkim_secret_name(owner.name, key), owner,
                 annotations={"smtpinfra.com/dkim-domain": key.domain, "smtpinfra.com/dkim-selector": key.selector,
                              "smtpinfra.com/dkim-algorithm": key.algorithm.value})
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": meta,
            "stringData": {"private.pem": private_pem, "dns.txt": dns_value}}


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def restart_hash(spec: SmtpServerSpec, image: str, tls_secret: str | None) -> str:
    """Digest of what the MTA cannot reload (ports, TLS, image): a change rolls the pods."""
    material = {"listeners": spec.listeners.wire(), "image": image, "tls": tls_secret,
                "resources": spec.resources.wire(),
                "dkim": sorted((k.domain, k.selector) for k in spec.dkim.keys)}
    return _digest(material)


TEMPLATE_HASH_ANNOTATION = "smtpinfra.com/template-hash"
"""On the pod template, so each pod says which template it was made from: a pod is up to date
when it carries the hash of the template the operator last applied (`pod_rollout`)."""


def template_hash(sts: dict[str, Any]) -> str:
    """The template hash of a StatefulSet this module built."""
    return str(sts["spec"]["template"]["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION])


@dataclass(frozen=True)
class Rollout:
    """A server's pods as they are: how many exist, and of the wanted ordinals how many are ready and current."""

    pods: int = 0
    ready: int = 0
    """Pods of ordinals below the wanted replicas that are Ready."""
    updated: int = 0
    """Pods of those ordinals made from the current template."""
    available: int = 0
    """Pods that are both: the rollout is done when this reaches the wanted replicas."""


def pod_ordinal(server: str, pod_name: str) -> int | None:
    """The StatefulSet ordinal of one of the server's pods (None: not one of its pods)."""
    prefix = f"{statefulset_name(server)}-"
    suffix = pod_name[len(prefix):] if pod_name.startswith(prefix) else ""
    return int(suffix) if suffix.isdigit() else None


def pod_rollout(server: str, pods: list[dict[str, Any]], want: int, current_template: str | None) -> Rollout:
    """Readiness from the pods themselves (pure).

    The StatefulSet's status says the same, but through kube-controller-manager, which under load
    published it seconds after the pods were Ready; each pod carries its template hash and Ready.
    A terminating pod counts as neither ready nor current.
    """
    ready = updated = available = existing = 0
    for pod in pods:
        meta = pod.get("metadata") or {}
        ordinal = pod_ordinal(server, meta.get("name", ""))
        if ordinal is None:
            continue
        existing += 1
        if ordinal >= want or meta.get("deletionTimestamp"):
            continue
        is_ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                       for c in (pod.get("status") or {}).get("conditions") or [])
        is_current = current_template is not None and \
            (meta.get("annotations") or {}).get(TEMPLATE_HASH_ANNOTATION) == current_template
        ready += is_ready
        updated += is_current
        available += is_ready and is_current
    return Rollout(pods=existing, ready=ready, updated=updated, available=available)


def _smtp_ports(spec: SmtpServerSpec) -> list[tuple[str, int]]:
    """(port name, port) of each enabled SMTP listener; containers and Services both use it."""
    listeners = spec.listeners
    candidates = [("submission", listeners.submission), ("smtps", listeners.implicit_tls),
                  ("smtp", listeners.inbound)]
    return [(name, listener.port) for name, listener in candidates if listener.enabled]


def _ports(spec: SmtpServerSpec) -> list[dict[str, Any]]:
    ports = [{"name": name, "containerPort": port, "protocol": "TCP"} for name, port in _smtp_ports(spec)]
    ports.append({"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"})
    ports.append({"name": "http-delivery", "containerPort": DELIVERY_HTTP_PORT, "protocol": "TCP"})
    if serves_mta_sts_https(spec):
        ports.append({"name": "mta-sts", "containerPort": MTA_STS_PORT, "protocol": "TCP"})
    return ports


def statefulset(
    owner: Owner, spec: SmtpServerSpec, replicas: int, image: str, tls_secret: str | None
) -> dict[str, Any]:
    """The MTA StatefulSet: one spool PVC per replica, probes on the MTA's health endpoints."""
    volumes: list[dict[str, Any]] = [
        {"name": "config", "configMap": {"name": config_map_name(owner.name)}},
        {"name": "credentials", "secret": {"secretName": credentials_secret_name(owner.name)}},
        {"name": "stats-token", "secret": {"secretName": stats_token_secret_name(owner.name), "optional": True}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "config", "mountPath": str(CONFIG_DIR), "readOnly": True},
        {"name": "credentials", "mountPath": str(CREDENTIALS_DIR), "readOnly": True},
        {"name": "stats-token", "mountPath": str(STATS_TOKEN_FILE.parent), "readOnly": True},
        {"name": "spool", "mountPath": str(SPOOL_DIR)},
    ]
    verp_volume, verp_mount = verp.volume(owner.name)
    volumes.append(verp_volume)
    mounts.append(verp_mount)
    unsubscribe_volume, unsubscribe_mount = unsubscribe.volume(owner.name)
    volumes.append(unsubscribe_volume)
    mounts.append(unsubscribe_mount)
    if tls_secret:
        volumes.append({"name": "tls", "secret": {"secretName": tls_secret}})
        mounts.append({"name": "tls", "mountPath": str(TLS_DIR), "readOnly": True})
    for index, key in enumerate(spec.dkim.keys):
        volumes.append({"name": f"dkim-{index}", "secret": {"secretName": dkim_secret_name(owner.name, key),
                                                             "items": [{"key": "private.pem",
                                                                        "path": "private.pem"}]}})
        mounts.append({"name": f"dkim-{index}", "mountPath": str(DKIM_DIR / f"{key.domain}.{key.selector}"),
                       "readOnly": True})
    resources = {k: v for k, v in spec.resources.wire().items() if v}
    container = {
        "name": "mta",
        "image": image,
        "command": ["smtp-infra", "mta", "serve"],
        # The kubelet expands $(VAR) from the container's env: each pod reads its own config
        # section; the MTA binds its listeners to the pod IP it is given.
        "args": ["--config", f"{CONFIG_DIR}/$(POD_NAME).yaml"],
        "env": [
            {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
            {"name": LISTEN_ADDRESS_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        ],
        "ports": _ports(spec),
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 2,
                           "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "initialDelaySeconds": 10,
                          "periodSeconds": 10, "failureThreshold": 3},
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}},
    }
    if resources:
        container["resources"] = resources
    claim: dict[str, Any] = {
        "metadata": {"name": "spool", "labels": labels(owner.name)},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": spec.spool.size}}},
    }
    if spec.spool.storage_class_name:
        claim["spec"]["storageClassName"] = spec.spool.storage_class_name
    template: dict[str, Any] = {
        "metadata": {
            "labels": labels(owner.name),
            "annotations": {"smtpinfra.com/restart-hash": restart_hash(spec, image, tls_secret)},
        },
        "spec": {
            # The MTA drains on SIGTERM: new sessions get 421, sessions in flight finish.
            "terminationGracePeriodSeconds": 60,
            "enableServiceLinks": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": MTA_UID, "runAsGroup": MTA_UID,
                                "fsGroup": MTA_UID, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": volumes,
        },
    }
    template["metadata"]["annotations"][TEMPLATE_HASH_ANNOTATION] = _digest(template)
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(statefulset_name(owner.name), owner),
        "spec": {
            "serviceName": headless_service_name(owner.name),
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
            "selector": {"matchLabels": selector_labels(owner.name)},
            "template": template,
            "volumeClaimTemplates": [claim],
        },
    }


def _service(name: str, owner: Owner, ports: list[dict[str, Any]], headless: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"selector": selector_labels(owner.name), "ports": ports}
    if headless:
        spec["clusterIP"] = "None"
        spec["publishNotReadyAddresses"] = True
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, owner), "spec": spec}


def services(owner: Owner, spec: SmtpServerSpec) -> list[dict[str, Any]]:
    """Headless (pod DNS, metrics), submission (587/465) and inbound (25) Services.

    With MTA-STS the submission and inbound Services also carry 443 → the MTA's policy listener:
    mta-sts.<domain> has the same A records as the host name (the addresses of these Services).
    """
    ports = dict(_smtp_ports(spec))
    https = [{"name": "mta-sts", "port": 443, "targetPort": "mta-sts"}] if serves_mta_sts_https(spec) else []
    submission = [{"name": name, "port": ports[name], "targetPort": name}
                  for name in ("submission", "smtps") if name in ports]
    out = [_service(headless_service_name(owner.name), owner,
                    [{"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                     {"name": "http-delivery", "port": DELIVERY_HTTP_PORT, "targetPort": "http-delivery"}],
                    headless=True)]
    if submission:
        out.append(_service(submission_service_name(owner.name), owner, submission + https))
    if "smtp" in ports:
        out.append(_service(inbound_service_name(owner.name), owner,
                            [{"name": "smtp", "port": ports["smtp"], "targetPort": "smtp"}, *https]))
    return out


def pod_disruption_budget(owner: Owner) -> dict[str, Any]:
    """At most one MTA pod voluntarily down at a time (each holds its own queue)."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _meta(pdb_name(owner.name), owner),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(owner.name)}}}


def service_monitor(owner: Owner) -> dict[str, Any]:
    """Prometheus Operator scrape config for the MTA's /metrics (only when that CRD exists)."""
    return {"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": _meta(owner.name, owner),
            "spec": {"selector": {"matchLabels": selector_labels(owner.name)},
                     "endpoints": [{"port": port, "path": "/metrics", "interval": "30s"}
                                   for port in ("http", "http-delivery")]}}


def certificate(owner: Owner, spec: SmtpServerSpec, secret_name: str) -> dict[str, Any]:
    """A cert-manager Certificate for the MTA host name (and mta-sts.<return-path domain> with MTA-STS)."""
    assert spec.tls is not None and spec.tls.issuer_ref is not None
    names = [spec.hostname] + ([f"mta-sts.{spec.return_path_domain}"] if spec.dns.mta_sts else [])
    return {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": _meta(owner.name, owner),
            "spec": {"secretName": secret_name, "dnsNames": names,
                     "issuerRef": {"name": spec.tls.issuer_ref.name, "kind": spec.tls.issuer_ref.kind.value,
                                   "group": "cert-manager.io"}}}
