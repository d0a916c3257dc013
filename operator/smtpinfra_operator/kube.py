"""The operator's Kubernetes I/O: get, list, server-side apply, create-once.

Over 500 lines and module state because it is the client being replaced: `smtpinfra_kube.Client`
has the same methods as objects; this module goes once the operator runs on it.

Synchronous kubernetes-client calls run in threads so Kopf's event loop stays free. Server-side
apply with one field manager makes every reconcile idempotent and restores objects that were
edited or deleted by hand, without clobbering fields other managers own.

Requests go straight to REST paths as JSON, not through the DynamicClient: its discovery cache
is not thread-safe (concurrent reconciles raised KeyError inside it), re-discovering every API
group to learn that an optional kind is absent cost a dozen requests per reconcile, and its
ResourceInstance wrappers doubled the CPU and memory of every list. Kinds we know are mapped
statically; anything else (cert-manager, Prometheus operator) is discovered once per group
version under a lock, with absence remembered for a short while.

Lists that every reconcile needs (Tenants, their credential Secrets, SmtpServers) come from
watch-backed informers (`list_cached`), kept current by one watch each instead of re-listed.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol
from urllib.parse import quote

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "smtp-infra-operator"
log = logging.getLogger(__name__)

__all__ = [
    "ApiException", "KindNotFound", "Paused", "apply", "create", "create_if_absent", "delete", "find_cached",
    "get", "get_cached", "get_known", "identify", "informer", "kind_exists", "list_cached", "list_objects", "remember",
    "request", "track_applied", "watch_cached",
]

# (apiVersion, kind) → (plural, namespaced) for the kinds the operator reads and writes.
_KNOWN: dict[tuple[str, str], tuple[str, bool]] = {
    ("v1", "Secret"): ("secrets", True),
    ("v1", "ConfigMap"): ("configmaps", True),
    ("v1", "Service"): ("services", True),
    ("v1", "Namespace"): ("namespaces", False),
    ("v1", "Event"): ("events", True),
    ("v1", "Pod"): ("pods", True),
    ("apps/v1", "StatefulSet"): ("statefulsets", True),
    ("policy/v1", "PodDisruptionBudget"): ("poddisruptionbudgets", True),
    ("smtpinfra.com/v1alpha1", "SmtpServer"): ("smtpservers", True),
    ("smtpinfra.com/v1alpha1", "IpPool"): ("ippools", False),
    ("smtpinfra.com/v1alpha1", "WarmupPlan"): ("warmupplans", False),
    ("smtpinfra.com/v1alpha1", "Tenant"): ("tenants", False),
    ("smtpinfra.com/v1alpha1", "Campaign"): ("campaigns", True),
    ("kopf.dev/v1", "ClusterKopfPeering"): ("clusterkopfpeerings", False),
}
ABSENT_KIND_SECONDS = 30.0
"""How long a kind found missing (e.g. ServiceMonitor before the Prometheus operator is installed) stays missing."""


class KindNotFound(LookupError):
    """The API server does not serve this kind (its CRD is not installed)."""


CONNECTIONS = 56
"""Kept-alive connections to the API server: at least the operator's request threads (48) plus the
informers' watches, so a burst does not open (TLS handshake) and discard a connection per request."""


USER_AGENT = "smtp-infra-operator"


class Paused(ApiException):
    """A write refused before it was sent: another replica of the peering is active."""

    def __init__(self, method: str, path: str) -> None:
        super().__init__(status=0, reason=f"{method} {path} not sent: this replica is paused (peering)")


READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
WriteGuard = Callable[[str], bool]
"""Called with a write's path; True when the write may be sent."""


class _OperatorClient(client.ApiClient):
    """The kubernetes-client ApiClient with what every request of this operator shares: its user
    agent (`smtp-infra-operator/<identity>`, so audit logs tell replicas apart) and the peering's
    write guard, asked before any request that is not a read."""

    may_write: WriteGuard | None = None

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        """Every request of this client passes here, whichever API class made it."""
        if method.upper() not in READ_METHODS and self.may_write is not None and not self.may_write(url):
            raise Paused(method, url)
        return super().call_api(method, url, *args, **kwargs)


@functools.cache
def api_client() -> _OperatorClient:
    """A client configured from the in-cluster ServiceAccount or KUBECONFIG."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    configuration.connection_pool_maxsize = CONNECTIONS
    api = _OperatorClient(configuration)
    api.user_agent = USER_AGENT
    return api


def identify(identity: str, may_write: WriteGuard | None = None) -> None:
    """Name this replica in every request's User-Agent, and install the peering's write guard.

    The guard is the last line of the peering rule (the queues ask first): a paused replica
    sends no write of any kind, whichever code path tried one.
    """
    api = api_client()
    api.user_agent = f"{USER_AGENT}/{identity}"
    api.may_write = may_write


def request(method: str, path: str, *, query: list[tuple[str, str]] | None = None, body: Any = None,
            content_type: str = "application/json", accept: str = "application/json") -> Any:
    """One REST call; the decoded JSON body, or ApiException for any non-2xx status.

    A write while the peering's guard says no raises `Paused` without a request (`_OperatorClient`).
    """
    api = api_client()
    request = api.param_serialize(method, path, query_params=query or [],
                                  header_params={"Accept": accept, "Content-Type": content_type},
                                  body=body, auth_settings=["BearerToken"])
    response = api.call_api(*request)
    data = response.read()
    if not 200 <= response.status <= 299:
        raise ApiException(http_resp=response)
    return json.loads(data) if data else None


_discovery_lock = threading.Lock()
_discovered: dict[str, tuple[float, dict[str, tuple[str, bool]]]] = {}


def _group_path(api_version: str) -> str:
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def _lookup(api_version: str, kind: str) -> tuple[str, bool]:
    """(plural, namespaced) of a kind; KindNotFound when the server does not serve it."""
    known = _KNOWN.get((api_version, kind))
    if known is not None:
        return known
    with _discovery_lock:
        now = time.monotonic()
        hit = _discovered.get(api_version)
        if hit is None or (kind not in hit[1] and now - hit[0] > ABSENT_KIND_SECONDS):
            try:
                listing = request("GET", _group_path(api_version))
            except ApiException as error:
                if error.status != 404:
                    raise
                listing = {"resources": []}
            kinds = {r["kind"]: (r["name"], bool(r.get("namespaced"))) for r in listing.get("resources", [])
                     if "/" not in r["name"]}
            hit = (now, kinds)
            _discovered[api_version] = hit
    found = hit[1].get(kind)
    if found is None:
        raise KindNotFound(f"{kind}.{api_version} is not served")
    return found


def _path(api_version: str, kind: str, namespace: str | None = None, name: str | None = None) -> str:
    plural, namespaced = _lookup(api_version, kind)
    path = _group_path(api_version)
    if namespaced and namespace:
        path += f"/namespaces/{quote(namespace)}"
    path += f"/{plural}"
    if name:
        path += f"/{quote(name)}"
    return path


async def get(api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""

    def call() -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = request("GET", _path(api_version, kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return result

    return await asyncio.to_thread(call)


async def list_objects(api_version: str, kind: str, namespace: str | None = None,
                       label_selector: str | None = None) -> list[dict[str, Any]]:
    """Every object of a kind (in one namespace or cluster-wide)."""

    def call() -> list[dict[str, Any]]:
        query = [("labelSelector", label_selector)] if label_selector else []
        items: list[dict[str, Any]] = request("GET", _path(api_version, kind, namespace), query=query)["items"]
        return [_slim(i) for i in items]

    return await asyncio.to_thread(call)


def _slim(obj: dict[str, Any]) -> dict[str, Any]:
    """Drop managedFields: nobody here reads them, and they are most of a listed object's bytes."""
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


_CACHED_METADATA = ("name", "namespace", "uid", "labels", "creationTimestamp", "deletionTimestamp",
                    "resourceVersion", "generation", "ownerReferences")


_STATUS_KEPT = {"Tenant", "IpPool", "SmtpServer", "ClusterKopfPeering"}
"""Kinds whose status the informer keeps (minus Kopf's bookkeeping): small, and read by every reconcile
(an IpPool's status holds its assignment, which the servers read; an SmtpServer's is what its
reconcile compares the new outcome with; a peering's status is the replicas' keep-alives, which
decide whether this replica may write)."""


OWN_ANNOTATION_PREFIX = "smtpinfra.com/"


def _cached_pod(obj: dict[str, Any], kept: dict[str, Any]) -> dict[str, Any]:
    """A pod as its server's readiness and usage need it: our annotations, phase, IP, the Ready condition."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    own = {k: v for k, v in annotations.items() if k.startswith(OWN_ANNOTATION_PREFIX)}
    if own:
        kept["metadata"]["annotations"] = own
    status = obj.get("status") or {}
    kept["status"] = {"phase": status.get("phase"), "podIP": status.get("podIP"),
                      "conditions": [c for c in status.get("conditions") or [] if c.get("type") == "Ready"]}
    return kept


def _metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """What a metadata-only informer keeps: enough to tell whether an object changed since we wrote it."""
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in ("name", "namespace", "resourceVersion", "generation", "labels")
                         if k in meta}}


def _cached(obj: dict[str, Any]) -> dict[str, Any]:
    """What an informer keeps of an object: identity, labels, spec (and a Secret's data).

    Readers of cached lists decide from specs and labels; status (DNS records, addresses,
    Kopf's copy of the last handled spec), annotations and managedFields were most of the
    bytes held for 1,000 Tenants and 200 SmtpServers. A Tenant's status (conditions, usage) is
    small and kept, so a resync of an unchanged Tenant costs no request (`get_cached`).
    """
    meta = obj.get("metadata") or {}
    kept: dict[str, Any] = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"),
                            "metadata": {k: meta[k] for k in _CACHED_METADATA if k in meta}}
    if obj.get("kind") == "Pod":
        return _cached_pod(obj, kept)
    for key in ("spec", "data", "type"):
        if key in obj:
            kept[key] = obj[key]
    if obj.get("kind") in _STATUS_KEPT and isinstance(obj.get("status"), dict):
        kept["status"] = {k: v for k, v in obj["status"].items() if k != "kopf"}
    return kept


_REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9./_-]+)\s*(?:(==?|!=)\s*([A-Za-z0-9._-]*))?\s*$")
WATCH_SECONDS = 240
"""Server-side timeout of one watch request; the informer then re-watches from its resourceVersion."""


def _selects(selector: str | None, labels: dict[str, str]) -> bool:
    """Whether a simple label selector (`k`, `!k`, `k=v`, `k!=v`, comma-separated) may select `labels`.

    Anything it cannot parse counts as no match: the write-through is skipped and the watch
    event brings the object a moment later instead (storing a non-matching object would stick).
    """
    if not selector:
        return True
    for requirement in selector.split(","):
        negated = requirement.strip().startswith("!")
        match = _REQUIREMENT.match(requirement.strip().lstrip("!"))
        if match is None:
            return False
        key, op, value = match.groups()
        if op is None:
            if (key in labels) == negated:
                return False
        elif (labels.get(key) == value) != (op != "!="):
            return False
    return True


class Informer:
    """A list kept current by a watch, in a daemon thread: reads cost nothing, changes cost one event.

    Re-listing 1,000 Tenants and their Secrets every second during a burst of server reconciles
    was most of the operator's CPU (JSON decoding, then garbage collection of the result). The
    store is replaced on every re-list and patched on every event; readers get a snapshot list.
    A read may trail a write by the moment the watch event takes; the periodic resync covers that.
    """

    def __init__(self, api_version: str, kind: str, namespace: str | None, label_selector: str | None,
                 metadata_only: bool = False, transport: InformerTransport | None = None,
                 start: bool = True) -> None:
        self.api_version, self.kind, self.namespace, self.selector = api_version, kind, namespace, label_selector
        self.metadata_only = metadata_only
        self._transport = transport or RestTransport()
        self._keep = _metadata if metadata_only else _cached
        self._store: dict[tuple[str, str], dict[str, Any]] = {}
        self._gone: dict[tuple[str, str], int] = {}
        """Objects the watch saw deleted, with the version of their deletion (see `put`)."""
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self.synced = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"informer-{kind}", daemon=True)
        if start:
            self._thread.start()

    def put(self, obj: dict[str, Any]) -> None:
        """Store one object we just wrote (see `remember`), unless the watch already knows better.

        The answer to our write can reach us after the watch's event of a later change, or of the
        object's deletion: storing it then would bring back an older object, or a deleted one,
        until the next re-list (a deleted SmtpServer was reconciled again and again).
        """
        key = self._key(obj)
        version = _version_number(obj)
        with self._lock:
            gone = self._gone.get(key)
            if gone is not None and (version is None or gone >= version):
                return
            held = self._store.get(key)
            held_version = _version_number(held) if held is not None else None
            if held_version is not None and version is not None and held_version > version:
                return
            self._store[key] = self._keep(obj)

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._store.values())

    def listen(self, listener: Listener) -> None:
        """Call `listener(type, object)` (in the informer's thread) after each change to the store.

        A re-list reports every listed object as ADDED and every object gone since as DELETED,
        so a listener never misses a change across a watch restart. A listener that joins late is
        told about every object already stored, as ADDED.
        """
        with self._lock:
            self._listeners.append(listener)
            known = list(self._store.values())
        for obj in known:
            listener("ADDED", obj)

    def _notify(self, changes: list[tuple[str, dict[str, Any]]]) -> None:
        for listener in self._listeners:
            for type_, obj in changes:
                try:
                    listener(type_, obj)
                except Exception:  # a listener's bug must not stop the informer
                    log.exception("informer %s listener failed", self.kind)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._store.get((namespace, name))

    @staticmethod
    def _key(obj: dict[str, Any]) -> tuple[str, str]:
        meta = obj["metadata"]
        return meta.get("namespace") or "", meta["name"]

    def accept(self, what: str) -> str:
        """Objects in full, or only their metadata (the API server then sends no spec, data or status)."""
        return f"application/json;as={what};g=meta.k8s.io;v=v1,application/json" if self.metadata_only \
            else "application/json"

    def _typed(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A listed item with its apiVersion and kind: a list's items carry neither (only the list
        does), and what the informer keeps depends on the kind (a pod's readiness, a Tenant's status).
        Without them, an operator that had just started kept pods without their status and
        annotations, and reported every Ready server as `PodsNotReady 0/N` until each pod changed."""
        obj.setdefault("apiVersion", self.api_version)
        obj.setdefault("kind", self.kind)
        return obj

    def _list(self) -> str:
        listing = self._transport.list(self)
        # An empty PartialObjectMetadataList has `items: null`: that once made every metadata-only
        # informer of a kind with no objects fail and list again each second, never synced.
        store = {self._key(o): self._keep(self._typed(o)) for o in listing.get("items") or []}
        with self._lock:
            gone = [o for k, o in self._store.items() if k not in store]
            self._store = store
            self._gone.clear()
        self.synced.set()
        if self._listeners:
            self._notify([("DELETED", o) for o in gone] + [("ADDED", o) for o in store.values()])
        return str(listing["metadata"]["resourceVersion"])

    def _watch(self, version: str) -> str:
        """Apply events until the watch ends; returns the last resourceVersion (raises to re-list)."""
        for event in self._transport.watch(self, version):
            obj = event["object"]
            if event["type"] == "ERROR":
                raise ApiException(status=obj.get("code"), reason=obj.get("message"))
            version = str(obj["metadata"]["resourceVersion"])
            if event["type"] == "BOOKMARK":
                continue
            kept = self._keep(self._typed(obj))
            with self._lock:
                if event["type"] == "DELETED":
                    self._store.pop(self._key(obj), None)
                    self._gone[self._key(obj)] = _version_number(obj) or 0
                else:
                    self._store[self._key(obj)] = kept
                    self._gone.pop(self._key(obj), None)
            if self._listeners:
                self._notify([(event["type"], kept)])
        return version

    def step(self, version: str | None) -> str:
        """One list (no `version` yet) or one watch until it ends; the version to go on from.

        The informer's thread repeats this; after an error (an expired version: 410, the API
        server restarting) it lists again, and a watch that simply ended resumes where it was.
        """
        return self._list() if version is None else self._watch(version)

    def _run(self) -> None:
        version: str | None = None
        while True:
            try:
                version = self.step(version)
            except Exception as error:  # expired resourceVersion (410), API restarts: re-list after a pause
                log.debug("informer %s %s restarts: %s", self.kind, self.selector or "", error)
                version = None
                time.sleep(1.0)


def _version_number(obj: dict[str, Any]) -> int | None:
    """An object's resourceVersion as a number, to order our writes against watch events.

    Kubernetes calls versions opaque; the API server's are etcd revisions, and anything else
    (None) is never taken as newer or older."""
    version = (obj.get("metadata") or {}).get("resourceVersion")
    return int(version) if isinstance(version, str) and version.isdigit() else None


Listener = Callable[[str, dict[str, Any]], None]
"""Called with a watch event's type and the object as the informer keeps it."""


class InformerTransport(Protocol):
    """How an informer lists and watches: the REST API here, a script in unit tests."""

    def list(self, informer: Informer) -> dict[str, Any]:
        """The list response (items and metadata.resourceVersion)."""
        ...

    def watch(self, informer: Informer, version: str) -> Iterator[dict[str, Any]]:
        """Watch events from `version` on, until the watch ends."""
        ...


class RestTransport:
    """Lists and watches over the operator's API client."""

    def list(self, informer: Informer) -> dict[str, Any]:
        query = [("labelSelector", informer.selector)] if informer.selector else []
        listing: dict[str, Any] = request("GET", _path(informer.api_version, informer.kind, informer.namespace),
                                          query=query, accept=informer.accept("PartialObjectMetadataList"))
        return listing

    def watch(self, informer: Informer, version: str) -> Iterator[dict[str, Any]]:
        query = [("watch", "1"), ("resourceVersion", version), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(WATCH_SECONDS))]
        if informer.selector:
            query.append(("labelSelector", informer.selector))
        api = api_client()
        call = api.param_serialize("GET", _path(informer.api_version, informer.kind, informer.namespace),
                                   query_params=query,
                                   header_params={"Accept": informer.accept("PartialObjectMetadata")},
                                   auth_settings=["BearerToken"])
        response = api.call_api(*call, _request_timeout=(10, WATCH_SECONDS + 30))
        if response.status != 200:
            response.read()
            raise ApiException(http_resp=response)
        buffer = b""
        for chunk in response.response.stream(65536):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line.strip():
                    yield json.loads(line)

_informers: dict[tuple[str, str, str | None, str | None, bool], Informer] = {}
_informers_lock = threading.Lock()


def _informer(key: tuple[str, str, str | None, str | None], metadata_only: bool = False) -> Informer:
    with _informers_lock:
        informer = _informers.get((*key, metadata_only))
        if informer is None:
            informer = _informers[(*key, metadata_only)] = Informer(*key, metadata_only=metadata_only)
        return informer


async def list_cached(api_version: str, kind: str, namespace: str | None = None,
                      label_selector: str | None = None, fresh: bool = False) -> list[dict[str, Any]]:
    """Every object of a kind as a watch-backed informer sees it; `fresh` lists from the API instead.

    After a Tenant change every SmtpServer re-renders; without this, N servers would list M
    tenants N times within the same moment. The first call for a kind starts its informer and
    waits for the initial list; later calls read memory. A read can trail our own write by one
    watch event; the periodic resync corrects anything a stale read missed.
    """
    key = (api_version, kind, namespace, label_selector)
    if fresh:
        return await list_objects(api_version, kind, namespace, label_selector)
    informer = _informer(key)
    if not informer.synced.is_set() and not await asyncio.to_thread(informer.synced.wait, 30.0):
        return await list_objects(api_version, kind, namespace, label_selector)
    return informer.items()


def informer(api_version: str, kind: str, label_selector: str | None = None) -> Informer:
    """The kind's cluster-wide informer (started on first use); `synced` tells when it has listed."""
    return _informer((api_version, kind, None, label_selector))


def watch_cached(api_version: str, kind: str, listener: Listener, label_selector: str | None = None) -> None:
    """Start (or join) the kind's cluster-wide informer and call `listener` on each change it sees.

    One watch both keeps the list that reconciles read and tells the operator when to read it, so
    a reconcile kicked by a change never reads a list older than that change.
    """
    _informer((api_version, kind, None, label_selector)).listen(listener)


def watch_metadata(api_version: str, kind: str, listener: Listener) -> None:
    """Call `listener` on each change of the kind's cluster-wide metadata-only informer (the one
    `get_known` reads): names and versions only, so watching every Secret holds no Secret data."""
    _informer((api_version, kind, None, None), metadata_only=True).listen(listener)


async def find_cached(api_version: str, kind: str, name: str, namespace: str | None = None,
                      label_selector: str | None = None) -> dict[str, Any] | None:
    """One object of a `list_cached` list by name, without a request (None: not in the informer)."""
    informer = _informer((api_version, kind, None, label_selector))
    if not informer.synced.is_set() and not await asyncio.to_thread(informer.synced.wait, 30.0):
        return None
    return informer.get(namespace or "", name)


async def get_cached(api_version: str, kind: str, name: str, namespace: str | None = None, *,
                     generation: int | None = None, labels: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The object as the kind's informer holds it (see `_cached`), else from the API (None: absent).

    The informer is fed by its own watch, and our writes go through to it (`remember`); an event
    handler that knows the object's `generation` (and labels) from its own event passes them, and
    a cached copy that is older gets read from the API instead.
    """
    informer = _informer((api_version, kind, None, None))
    if informer.synced.is_set():
        found = informer.get(namespace or "", name)
        if found is not None and (generation is None or (found["metadata"].get("generation") or 0) >= generation) \
                and (labels is None or (found["metadata"].get("labels") or {}) == labels):
            return found
    return await get(api_version, kind, name, namespace)


_KNOWN_KINDS = frozenset({("v1", "Secret"), ("v1", "Service")})
"""Kinds `get_known` serves: read by every server reconcile (TLS and DKIM Secrets, the Services' addresses)."""
_known: dict[tuple[str, str, str, str], tuple[str, dict[str, Any]]] = {}
"""(apiVersion, kind, namespace, name) → (resourceVersion, the object at that version) as last read or written."""


async def get_known(api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    """The object, without a request when its answer is already known (None: absent).

    A metadata-only informer of the kind (names and versions of every object, no data) says
    whether it exists and at which version; the object is fetched only when this process has not
    read or written that version yet. A burst of 200 servers otherwise read the same TLS Secret,
    their DKIM Secrets and their Services again on every reconcile.
    """
    if (api_version, kind) not in _KNOWN_KINDS:
        return await get(api_version, kind, name, namespace)
    informer = _informer((api_version, kind, None, None), metadata_only=True)
    if not informer.synced.is_set() and not await asyncio.to_thread(informer.synced.wait, 30.0):
        return await get(api_version, kind, name, namespace)
    meta = informer.get(namespace or "", name)
    if meta is None:
        return None
    key = (api_version, kind, namespace or "", name)
    version = str(meta["metadata"].get("resourceVersion"))
    hit = _known.get(key)
    if hit is not None and hit[0] == version:
        return hit[1]
    found = await get(api_version, kind, name, namespace)
    if found is not None:
        _known[key] = (str(found["metadata"].get("resourceVersion")), found)
    else:
        _known.pop(key, None)
    return found


def remember(obj: dict[str, Any]) -> None:
    """Write-through: put an object we just wrote into the informers that list it (read-your-writes).

    A reconcile that runs right after our write (e.g. servers kicked after a Tenant's credentials
    Secret was created) then sees it even before the watch event arrives.
    """
    meta = obj.get("metadata") or {}
    if (obj.get("apiVersion"), obj.get("kind")) in _KNOWN_KINDS and meta.get("resourceVersion"):
        _known[(obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])] = (
            str(meta["resourceVersion"]), obj)
    with _informers_lock:
        informers = list(_informers.values())
    for informer in informers:
        if (informer.api_version, informer.kind) != (obj.get("apiVersion"), obj.get("kind")):
            continue
        if informer.namespace is not None and informer.namespace != meta.get("namespace"):
            continue
        if _selects(informer.selector, meta.get("labels") or {}):
            informer.put(obj)


_tracked_selector: str | None = None
_on_changed: Callable[[dict[str, Any]], None] | None = None
_TRACKED_KINDS = frozenset({("v1", "ConfigMap"), ("v1", "Secret"), ("v1", "Service"), ("apps/v1", "StatefulSet"),
                            ("policy/v1", "PodDisruptionBudget")})
_GENERATION_KINDS = frozenset({("apps/v1", "StatefulSet"), ("policy/v1", "PodDisruptionBudget")})
"""Kinds whose controllers write their status often: a changed `generation` (spec), not resourceVersion, is an edit."""
_last_applied: dict[tuple[str, str, str, str], tuple[str, str, dict[str, Any]]] = {}
"""(apiVersion, kind, namespace, name) → (digest of what we applied, the version it made, its metadata)."""


def track_applied(label_selector: str, on_changed: Callable[[dict[str, Any]], None] | None = None) -> None:
    """Watch our own objects (those `label_selector` selects): skip re-applying what nobody changed,
    and call `on_changed(metadata)` (in an informer thread) when somebody else changes or deletes one.

    A periodic resync re-applied every child of every server (ten writes per server a minute,
    2,000 with 200 servers) only to find them as they were. A metadata-only informer per kind
    (no spec, data or status crosses the wire) tells whether anyone touched an object since our
    last apply: its version is still the one our apply made. The same watch tells the owner at
    once when a child is edited or deleted by hand, instead of at the next resync.
    """
    global _tracked_selector, _on_changed
    _tracked_selector, _on_changed = label_selector, on_changed
    for api_version, kind in sorted(_TRACKED_KINDS):
        informer = _informer((api_version, kind, None, label_selector), metadata_only=True)
        informer.listen(functools.partial(_tracked_event, api_version, kind))


def _tracked_event(api_version: str, kind: str, type_: str, obj: dict[str, Any]) -> None:
    """A watch event of one of our objects: was it somebody else's change?

    A deletion always counts (whoever made the object, e.g. a generated DKIM key). A change
    counts when the object's version is not the one our last apply made; our own write can reach
    the watch before the apply's answer is recorded, which costs one reconcile that finds nothing
    to do.
    """
    meta = obj["metadata"]
    key = (api_version, kind, meta.get("namespace") or "", meta["name"])
    if type_ == "DELETED":
        _last_applied.pop(key, None)
    else:
        last = _last_applied.get(key)
        if last is None or _version(api_version, kind, meta) == last[1]:
            return
    if _on_changed is not None:
        _on_changed(meta)


def _version(api_version: str, kind: str, meta: dict[str, Any]) -> str:
    if (api_version, kind) in _GENERATION_KINDS:
        return f"g{meta.get('generation')}"
    return f"r{meta.get('resourceVersion')}"


def _tracker(obj: dict[str, Any]) -> Informer | None:
    if _tracked_selector is None or (obj["apiVersion"], obj["kind"]) not in _TRACKED_KINDS:
        return None
    if not _selects(_tracked_selector, obj["metadata"].get("labels") or {}):
        return None
    return _informer((obj["apiVersion"], obj["kind"], None, _tracked_selector), metadata_only=True)


def _digest(obj: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def apply(obj: dict[str, Any]) -> dict[str, Any]:
    """Server-side apply `obj` as the operator's field manager (forcing our own fields back).

    The object as the server returned it; for a tracked object (`track_applied`) that nobody
    changed since our last apply of the same content, no request is made and only its metadata
    as that apply left it is returned.
    """
    meta = obj["metadata"]
    key = (obj["apiVersion"], obj["kind"], meta.get("namespace") or "", meta["name"])
    tracker = _tracker(obj)
    digest = _digest(obj) if tracker is not None else ""
    if tracker is not None and tracker.synced.is_set():
        last = _last_applied.get(key)
        live = tracker.get(key[2], key[3])
        if last is not None and live is not None and last[0] == digest \
                and _version(key[0], key[1], live["metadata"]) == last[1]:
            return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": dict(last[2])}

    def call() -> dict[str, Any]:
        result: dict[str, Any] = request(
            "PATCH", _path(obj["apiVersion"], obj["kind"], meta.get("namespace"), meta["name"]),
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")], body=obj,
            content_type="application/apply-patch+yaml")
        remember(result)
        if tracker is not None:
            written = result.get("metadata") or {}
            _last_applied[key] = (digest, _version(key[0], key[1], written), _metadata(result)["metadata"])
        return result

    return await asyncio.to_thread(call)



async def create_if_absent(obj: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
    """Create `obj` unless it exists; never modifies an existing one. Returns (created, object)."""
    meta = obj["metadata"]
    existing = await get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
    if existing is not None:
        return False, existing

    def call() -> dict[str, Any]:
        result: dict[str, Any] = request("POST", _path(obj["apiVersion"], obj["kind"], meta.get("namespace")),
                                         body=obj)
        remember(result)
        return result

    try:
        return True, await asyncio.to_thread(call)
    except ApiException as error:
        if error.status == 409:  # created concurrently: keep theirs
            found = await get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
            assert found is not None
            return False, found
        raise


async def create(obj: dict[str, Any]) -> dict[str, Any] | None:
    """Create `obj`; None when created, else the object that already exists (never modified).

    The create-first twin of `create_if_absent`: one request when the object is new, two when
    it exists. For objects that are usually new (a tenant's namespace and Secret) and whose
    absence the caller already believes.
    """
    meta = obj["metadata"]

    def call() -> None:
        remember(request("POST", _path(obj["apiVersion"], obj["kind"], meta.get("namespace")), body=obj))

    try:
        await asyncio.to_thread(call)
        return None
    except ApiException as error:
        if error.status != 409:
            raise
    found = await get(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))
    if found is None:  # deleted again meanwhile: the next reconcile creates it
        raise ApiException(status=409, reason=f"{obj['kind']} {meta['name']} exists and vanished")
    return found


async def delete(api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
    """Delete if present; returns whether something was deleted."""

    def call() -> bool:
        try:
            request("DELETE", _path(api_version, kind, namespace, name))
        except ApiException as error:
            if error.status == 404:
                return False
            raise
        return True

    return await asyncio.to_thread(call)


async def kind_exists(api_version: str, kind: str) -> bool:
    """Whether the API serves a kind (e.g. ServiceMonitor, Certificate are optional CRDs).

    A missing kind is looked up again at most every ABSENT_KIND_SECONDS, so installing the CRD
    later is noticed by the next resync, without a discovery round trip on every reconcile.
    """

    def call() -> bool:
        try:
            _lookup(api_version, kind)
        except KindNotFound:
            return False
        return True

    return await asyncio.to_thread(call)
