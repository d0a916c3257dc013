"""Service names → a ready endpoint pod's IP: the pod runner's stand-in for cluster DNS + kube-proxy.

The local pod runner has neither a cluster DNS server nor kube-proxy, so a client in a pod cannot
resolve or reach ``<service>.<namespace>.svc``. Each pod's /etc/hosts therefore names every
Service with a selector (``name``, ``name.ns``, ``name.ns.svc``, ``name.ns.svc.cluster.local``;
the short name only for the pod's own namespace, as the cluster's search path would) mapped to
the IP of one ready pod the selector matches. Pods bind on their pod IP with the container port,
and Services here keep port == targetPort, so the Service port reaches the pod. The choice is
stable (lowest IP) so a file is not rewritten while nothing changes. Pure functions.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

CLUSTER_DOMAIN = "cluster.local"


def _ready(pod: Mapping[str, Any]) -> bool:
    status = pod.get("status") or {}
    if pod.get("metadata", {}).get("deletionTimestamp") or not status.get("podIP"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _matches(selector: Mapping[str, str], pod: Mapping[str, Any]) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == v for k, v in selector.items())


def service_endpoints(services: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]
                      ) -> dict[tuple[str, str], str]:
    """(namespace, service) → the IP of one ready pod its selector matches (Services without one omitted)."""
    by_ns: dict[str, list[Mapping[str, Any]]] = {}
    for pod in pods:
        if _ready(pod):
            by_ns.setdefault(str(pod["metadata"]["namespace"]), []).append(pod)
    found: dict[tuple[str, str], str] = {}
    for svc in services:
        selector = (svc.get("spec") or {}).get("selector") or {}
        if not selector:
            continue
        ns, name = str(svc["metadata"]["namespace"]), str(svc["metadata"]["name"])
        ips = sorted((str(p["status"]["podIP"]) for p in by_ns.get(ns, []) if _matches(selector, p)),
                     key=ipaddress.ip_address)
        if ips:
            found[(ns, name)] = ips[0]
    return found


def pod_names(services: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """``<hostname>.<subdomain>.<ns>.svc`` → IP of each ready pod that names a Service of its namespace as its
    subdomain (a StatefulSet's pods under its headless Service), as cluster DNS answers them."""
    known = {(str(s["metadata"]["namespace"]), str(s["metadata"]["name"])) for s in services}
    out: dict[str, str] = {}
    for pod in pods:
        spec = pod.get("spec") or {}
        ns = str(pod["metadata"]["namespace"])
        hostname, subdomain = spec.get("hostname"), spec.get("subdomain")
        if _ready(pod) and hostname and subdomain and (ns, subdomain) in known:
            out[f"{hostname}.{subdomain}.{ns}.svc"] = str(pod["status"]["podIP"])
    return out


def hosts_lines(endpoints: Mapping[tuple[str, str], str], own_namespace: str,
                pods: Mapping[str, str] | None = None) -> list[str]:
    """/etc/hosts lines naming each Service (short name only in the pod's own namespace), sorted."""
    lines = []
    for (ns, name), ip in sorted(endpoints.items()):
        names = [f"{name}.{ns}.svc.{CLUSTER_DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == own_namespace:
            names.append(name)
        lines.append(f"{ip}\t{' '.join(names)}")
    for name, ip in sorted((pods or {}).items()):
        lines.append(f"{ip}\t{name}.{CLUSTER_DOMAIN} {name}")
    return lines
