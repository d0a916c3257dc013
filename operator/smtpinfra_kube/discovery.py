"""Kind → REST path: a static table for the kinds we always use, discovery for the rest.

Re-discovering every API group to learn that an optional kind (ServiceMonitor, Certificate) is
absent cost a dozen requests per reconcile; a group version is discovered once, under a lock
(concurrent reconciles share one answer), and a kind found absent is looked up again only after
`absent_ttl` seconds, so a CRD installed later is noticed by the next resync.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .errors import ApiException, KindNotFound

__all__ = ["ABSENT_KIND_SECONDS", "KNOWN_KINDS", "Discovery", "group_path"]

KNOWN_KINDS: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Service"): ("services", True),
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "Event"): ("events", True),
    ("v1", "Pod"): ("pods", True),
    ("v1", "Node"): ("nodes", False),
    ("v1", "PersistentVolume"): ("persistentvolumes", False),
    ("v1", "PersistentVolumeClaim"): ("persistentvolumeclaims", True),
    ("v1", "ServiceAccount"): ("serviceaccounts", True),
    ("apps/v1", "StatefulSet"): ("statefulsets", True),
    ("policy/v1", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    ("coordination.k8s.io/v1", "Lease"): ("leases", True),
    ("batch/v1", "Job"): ("jobs", True),
    ("smtpinfra.com/v1alpha1", "SmtpServer"): ("smtpservers", True),
    ("smtpinfra.com/v1alpha1", "IpPool"): ("ippools", False),
    ("smtpinfra.com/v1alpha1", "WarmupPlan"): ("warmupplans", False),
    ("smtpinfra.com/v1alpha1", "Tenant"): ("tenants", False),
    ("smtpinfra.com/v1alpha1", "Campaign"): ("campaigns", True),
    ("kopf.dev/v1", "ClusterKopfPeering"): ("clusterkopfpeerings", False),
}
"""(apiVersion, kind) → (plural, namespaced) of the kinds served by every cluster we run on."""
ABSENT_KIND_SECONDS = 30.0


def group_path(api_version: str) -> str:
    """The REST prefix of a group version: /api/v1 for the core group, else /apis/<group>/<version>."""
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


class Discovery:
    """Maps kinds to (plural, namespaced), asking the API server only for kinds it does not know."""

    def __init__(self, get: Callable[[str], Any], *, known: dict[tuple[str, str], tuple[str, bool]] | None = None,
                 absent_ttl: float = ABSENT_KIND_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self._get = get
        self._known = dict(KNOWN_KINDS if known is None else known)
        self._absent_ttl = absent_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._discovered: dict[str, tuple[float, dict[str, tuple[str, bool]]]] = {}

    def cached(self, api_version: str, kind: str) -> tuple[str, bool] | None:
        """The answer if known without a request (static table or a discovered group), else None."""
        known = self._known.get((api_version, kind))
        if known is not None:
            return known
        hit = self._discovered.get(api_version)
        return hit[1].get(kind) if hit is not None else None

    def lookup(self, api_version: str, kind: str) -> tuple[str, bool]:
        """(plural, namespaced) of a kind; KindNotFound when the server does not serve it."""
        known = self._known.get((api_version, kind))
        if known is not None:
            return known
        with self._lock:
            now = self._clock()
            hit = self._discovered.get(api_version)
            if hit is None or (kind not in hit[1] and now - hit[0] > self._absent_ttl):
                try:
                    listing = self._get(group_path(api_version))
                except ApiException as error:
                    if error.status != 404:
                        raise
                    listing = {"resources": []}
                kinds = {r["kind"]: (r["name"], bool(r.get("namespaced"))) for r in listing.get("resources", [])
                         if "/" not in r["name"]}
                hit = (now, kinds)
                self._discovered[api_version] = hit
        found = hit[1].get(kind)
        if found is None:
            raise KindNotFound(f"{kind}.{api_version} is not served")
        return found

    @staticmethod
    def path(api_version: str, resource: tuple[str, bool], namespace: str | None = None,
             name: str | None = None) -> str:
        """The REST path of a collection (no name) or of one object."""
        plural, namespaced = resource
        path = group_path(api_version)
        if namespaced and namespace:
            path += f"/namespaces/{quote(namespace)}"
        path += f"/{plural}"
        if name:
            path += f"/{quote(name)}"
        return path
