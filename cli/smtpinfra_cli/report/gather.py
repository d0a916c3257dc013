"""Reads what the report shows: the smtpinfra.com resources, the MTA pods, and each pod's /stats.

Only reads. The MTA pods are found by the labels the operator gives them and reached on their pod
IP and the container port named ``http``. When the server has a stats token Secret, its token is
sent as a bearer token; without one the request goes out bare, and a pod that refuses it or does
not answer is reported as such rather than failing the report.
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from smtpinfra_kube import ApiException, Client, ConfigError, KubeConfig

from .model import Report, StatsResult, build

GROUP, VERSION = "smtpinfra.com", "v1alpha1"
#: Kind → plural, for the REST paths.
PLURALS = {"SmtpServer": "smtpservers", "IpPool": "ippools", "Tenant": "tenants", "Campaign": "campaigns"}
#: Labels the operator puts on every MTA pod (app.kubernetes.io/instance is the server's name).
MTA_POD_SELECTOR = "app.kubernetes.io/name=smtp-infra-mta"
STATS_TIMEOUT = 3.0

Fetch = Callable[[str, int, str | None], Mapping[str, Any]]


@dataclass(frozen=True)
class StatsOptions:
    enabled: bool = True
    token_secret: str = "{server}-stats-token"
    """Secret (in the server's namespace) holding the stats bearer token; the name may use {server}."""
    token_key: str = "token"


def fetch_stats(ip: str, port: int, token: str | None) -> Mapping[str, Any]:
    """GET http://ip:port/stats; raises on anything but a JSON object."""
    request = urllib.request.Request(f"http://{ip}:{port}/stats", headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=STATS_TIMEOUT) as response:
        data = json.loads(response.read())
    if not isinstance(data, dict):
        raise ValueError("/stats is not a JSON object")
    return data


def http_port(pod: Mapping[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == "http":
                return int(port["containerPort"])
    return None


def read_stats(pod: Mapping[str, Any], token: str | None, fetch: Fetch) -> StatsResult:
    """One pod's /stats, or the reason there is none (never raises)."""
    ip, port = (pod.get("status") or {}).get("podIP"), http_port(pod)
    if (pod.get("status") or {}).get("phase") != "Running" or not ip:
        return StatsResult(error="not running")
    if port is None:
        return StatsResult(error="no http port")
    try:
        return StatsResult(stats=fetch(ip, port, token))
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return StatsResult(error="stats refused (no token)" if token is None else "stats token refused")
        return StatsResult(error=f"HTTP {error.code}")
    except (OSError, TimeoutError, ValueError) as error:
        return StatsResult(error=f"unreachable ({type(error).__name__})")


class Gatherer:
    """Reads through a Kubernetes client (its sync `request`: the report is one short CLI run)."""

    def __init__(self, kube: Client, stats: StatsOptions | None = None, fetch: Fetch = fetch_stats) -> None:
        self._kube = kube
        self._stats = stats or StatsOptions()
        self._fetch = fetch

    def _list(self, kind: str) -> list[dict[str, Any]]:
        result = self._kube.request("GET", f"/apis/{GROUP}/{VERSION}/{PLURALS[kind]}")
        if not isinstance(result, dict):
            raise TypeError(f"unexpected answer listing {PLURALS[kind]}: {type(result).__name__}")
        return list(result.get("items") or [])

    def _token(self, namespace: str, server: str) -> str | None:
        name = self._stats.token_secret.format(server=server)
        try:
            secret = self._kube.request("GET", f"/api/v1/namespaces/{quote(namespace)}/secrets/{quote(name)}")
        except ApiException as error:
            if error.status in (403, 404):
                return None  # no token Secret (or no right to read it): ask without one
            raise
        value = (secret.get("data") or {}).get(self._stats.token_key)
        if not value:
            return None
        return base64.b64decode(value).decode().strip() or None

    def gather(self) -> Report:
        objects = {kind: self._list(kind) for kind in PLURALS}
        listing = self._kube.request("GET", "/api/v1/pods", query=[("labelSelector", MTA_POD_SELECTOR)])
        pods: list[dict[str, Any]] = list(listing.get("items") or [])
        stats: dict[tuple[str, str], StatsResult] = {}
        warnings: list[str] = []
        if self._stats.enabled and pods:
            servers = {(p["metadata"]["namespace"], (p["metadata"].get("labels") or {}).get(
                "app.kubernetes.io/instance", "")) for p in pods}
            tokens = {key: self._token(*key) for key in servers}

            def one(pod: dict[str, Any]) -> tuple[tuple[str, str], StatsResult]:
                meta = pod["metadata"]
                server = (meta.get("labels") or {}).get("app.kubernetes.io/instance", "")
                token = tokens.get((meta["namespace"], server))
                return (meta["namespace"], meta["name"]), read_stats(pod, token, self._fetch)

            with ThreadPoolExecutor(max_workers=8) as pool:
                stats = dict(pool.map(one, pods))
            missing = sorted(f"{ns}/{name}" for (ns, name), r in stats.items() if r.error)
            if missing:
                warnings.append(f"no /stats from {len(missing)} pod(s): {', '.join(missing[:5])}"
                                + (" …" if len(missing) > 5 else ""))
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return build(now, objects, pods, stats, warnings)


def kube_client(kubeconfig: str | None) -> Client:
    """A client from the kubeconfig given (or $KUBECONFIG / ~/.kube/config), else in-cluster config.

    A person at a terminal means their kubeconfig even inside a pod, so it is tried first."""
    try:
        config = KubeConfig.from_kubeconfig(kubeconfig)
    except ConfigError:
        if kubeconfig:
            raise
        config = KubeConfig.in_cluster()
    return Client(config, user_agent="smtp-infra-report")
