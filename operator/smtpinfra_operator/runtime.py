"""The operator, built in one place: the gate, the client, the controllers, the usage collector and the resync.

`Runtime` constructs every part at start-up and hands each controller its dependencies (the
Kubernetes client, the status writer, the metrics, the peering gate, the clock). Event sources
only put keys on queues: Kopf's watches (registered here, on a registry of this runtime, not
Kopf's global one), the informers of children, pods, pools and Secrets (`start_watches`), and
the resync. Nothing of it is module state, so two runtimes (e.g. in a test) do not share any.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping
from typing import Any

import kopf
from prometheus_client import CollectorRegistry

from smtpinfra_api.meta import API_VERSION, GROUP, VERSION
from smtpinfra_api.v1alpha1 import Campaign, IpPool, SmtpServer, Tenant, WarmupPlan
from smtpinfra_kube import KubeApi, KubeConfig

from .campaigns import job as campaign_job
from .controller import Clock, Deps
from .controllers.campaign import CampaignQueue
from .controllers.dns import DnsPublisher, uses_rfc2136
from .controllers.ippool import IpPoolController
from .controllers.smtpserver import SmtpServerController
from .controllers.tenant import TenantController, refused_for_another
from .controllers.warmupplan import WarmupPlanController
from .dkimkeys import DkimKeys
from .metrics import RuntimeMetrics
from .peering import PEERING_GROUP, Gate, Peering
from .reputation.dnsbl_kube import monitor as dnsbl_monitor
from .reputation.warmup_metrics import WarmupMetrics
from .reputation.warmup_status import wall_now
from .resync import Resync, Source
from .settings import RESYNC_SECONDS
from .statuswriter import StatusWriter
from .tenant_index import TenantIndex
from .usage import UsageCollector

log = logging.getLogger(__name__)


def connection_info(config: KubeConfig) -> kopf.ConnectionInfo:
    """Kopf's credentials from ours (pure apart from reading a rotated token file): a token that
    expires makes Kopf log in again, which reads the file again."""
    return kopf.ConnectionInfo(
        server=config.server, ca_path=config.ca_file, ca_data=config.ca_data, insecure=config.insecure,
        token=config.bearer_token(), certificate_path=config.cert_file, certificate_data=config.cert_data,
        private_key_path=config.key_file, private_key_data=config.key_data)


class Runtime:
    """Every part of one operator process, and the Kopf registry whose handlers feed its queues."""

    def __init__(self, peering: Peering | None = None, *, kube: KubeApi,
                 metrics_registry: CollectorRegistry | None = None, clock: Clock | None = None,
                 resync_seconds: float = RESYNC_SECONDS, kube_config: KubeConfig | None = None) -> None:
        self.kube = kube
        self.kube_config = kube_config
        """What Kopf logs in with (the client's own configuration); None: loaded at login."""
        self.gate = Gate(peering)
        self.clock = clock or Clock(now=wall_now)  # the MTAs' clock too (SMTP_INFRA_FAKE_TIME_FILE in tests)
        self.metrics_registry = metrics_registry or CollectorRegistry()
        self.metrics = RuntimeMetrics(self.metrics_registry)
        self.metrics.track_active(peering.name if peering else "", lambda: not self.gate.paused())
        self.status = StatusWriter(self.kube, self.clock.now)
        deps = Deps(kube=self.kube, status=self.status, metrics=self.metrics, paused=self.gate.paused,
                    clock=self.clock)
        self.usage = UsageCollector(self.kube, now=self.clock.now)
        self.plans = WarmupPlanController(deps)
        self.pools = IpPoolController(deps, usage=self.usage.latest,
                                      warmup_metrics=WarmupMetrics(self.metrics_registry))
        self.blocklists = dnsbl_monitor(self.kube, self.status, self.gate.paused, self.pools.kick,
                                        self.metrics_registry)
        self.pools.attach_monitor(self.blocklists)
        self.dkim_keys = DkimKeys()
        self.dns = DnsPublisher(self.kube, self.status, self.clock.monotonic, self.pools.note_ptr_checks,
                               self.dkim_keys)
        self.tenant_index = TenantIndex(refused=refused_for_another)
        self.servers = SmtpServerController(deps, self.pools, self.dns, self.tenant_index, self.dkim_keys)
        self.campaigns = CampaignQueue(deps, self.usage, self.metrics_registry)
        self.tenants = TenantController(deps, self.tenant_index, kick_server=self.servers.kick,
                                        usage=self.usage.latest,
                                        campaigns=self.campaigns)
        self.resync = Resync(self._resync_sources(), paused=self.gate.paused, period=resync_seconds,
                             before=self.usage.collect)
        self.registry = kopf.OperatorRegistry()
        self._register(self.registry)

    # ---------------------------------------------------------------------------- resync

    def _resync_sources(self) -> list[Source]:
        """Each kind's keys from its informer (names are all we need), onto its queue as background keys."""

        async def names(kind: str) -> list[Hashable]:
            return [o["metadata"]["name"] for o in await self.kube.list_cached(API_VERSION, kind)]

        async def plans() -> list[Hashable]:
            return await names("WarmupPlan")

        async def tenants() -> list[Hashable]:
            return await names("Tenant")

        async def pools() -> list[Hashable]:
            return await names("IpPool")

        async def servers() -> list[Hashable]:
            keys = [(s["metadata"]["namespace"], s["metadata"]["name"])
                    for s in await self.kube.list_cached(API_VERSION, "SmtpServer")]
            return [k for k in keys if self.servers.wants_resync(k)]

        def background(queue: Any) -> Any:
            return lambda key: queue.kick(key, background=True)

        return [Source(plans, background(self.plans)), Source(tenants, background(self.tenants)),
                Source(pools, background(self.pools)), Source(servers, background(self.servers)),
                # after the tenants, whose suspension a campaign reads
                Source(self.campaigns.resync_keys, background(self.campaigns))]

    # ------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start watching the peering, the children and pods, and the resync (in the running loop).

        The peering object is created when missing: Kopf only patches it, and without it the
        keep-alives fail silently and every replica believes it is alone.
        """
        self.gate.start(self.kube)
        if self.gate.me is not None:
            await self.kube.create_if_absent({"apiVersion": PEERING_GROUP, "kind": "ClusterKopfPeering",
                                              "metadata": {"name": self.gate.me.name}})
        self.kube.watch_cached(API_VERSION, "Tenant", self.tenant_index.observe)
        self.servers.start_watches(asyncio.get_running_loop())
        self.blocklists.start()
        self.resync.start()

    async def stop(self) -> None:
        """Stop the resync and the blocklist monitor (the queues' tasks end with the loop)."""
        self.resync.stop()
        await self.blocklists.stop()

    # -------------------------------------------------------------------- Kopf's watches

    def _register(self, registry: kopf.OperatorRegistry) -> None:
        """Kopf's watches of our kinds, each of which only puts keys on a controller's queue.

        Handler ids are fixed (Kopf keeps per-handler progress in status.kopf under them).
        """

        # A registry of our own has none of the login handlers Kopf's default one brings along. Kopf
        # logs in with the configuration our client uses (Kopf's own `login_via_client` would need
        # the `kubernetes` package, which the operator image does not install).
        @kopf.on.login(registry=registry, id="login")
        def login(**_: Any) -> kopf.ConnectionInfo:
            return connection_info(self.kube_config or KubeConfig.load())

        @kopf.on.startup(registry=registry, id="start_runtime")
        async def start(**_: Any) -> None:
            await self.start()

        @kopf.on.cleanup(registry=registry, id="stop_runtime")
        async def stop(**_: Any) -> None:
            await self.stop()

        @kopf.on.event(GROUP, VERSION, SmtpServer.plural, id="on_server", registry=registry)
        async def on_server(namespace: str | None, name: str, body: kopf.Body, type: str | None, **_: Any) -> None:
            assert namespace is not None
            self.servers.on_event(namespace, name, body, type)

        @kopf.on.delete(GROUP, VERSION, SmtpServer.plural, when=uses_rfc2136, id="dns-records", registry=registry)
        async def on_server_deleted(body: kopf.Body, namespace: str | None, name: str, retry: int,
                                    **_: Any) -> None:
            await self.dns.on_server_deleted(body, namespace, name, retry)

        @kopf.on.event(GROUP, VERSION, Tenant.plural, id="on_tenant", registry=registry)
        async def on_tenant(name: str, body: kopf.Body, type: str | None, **_: Any) -> None:
            self.tenants.on_event(name, body, type)

        for register in (kopf.on.resume, kopf.on.create):
            register(GROUP, VERSION, IpPool.plural, id="on_pool", registry=registry)(self._on_pool)
            register(GROUP, VERSION, WarmupPlan.plural, id="reconcile", registry=registry)(self._on_plan)
        kopf.on.update(GROUP, VERSION, IpPool.plural, field="spec", id="on_pool", registry=registry)(self._on_pool)
        kopf.on.delete(GROUP, VERSION, IpPool.plural, optional=True, id="on_pool", registry=registry)(self._on_pool)
        kopf.on.update(GROUP, VERSION, WarmupPlan.plural, field="spec", id="reconcile",
                       registry=registry)(self._on_plan)

        @kopf.on.event(GROUP, VERSION, WarmupPlan.plural, id="on_plan_event", registry=registry)
        async def on_plan_event(name: str, type: str | None, **_: Any) -> None:
            if type is not None:
                await self.pools.plan_changed(name)

        @kopf.on.event(GROUP, VERSION, Campaign.plural, id="on_campaign", registry=registry)
        async def on_campaign(name: str, namespace: str | None, **_: Any) -> None:
            self.campaigns.kick((namespace or "", name), delay=0.0)

        @kopf.on.event("batch", "v1", "jobs", labels={"app.kubernetes.io/component": campaign_job.COMPONENT},
                       id="on_sender_job", registry=registry)
        async def on_sender_job(namespace: str | None, labels: Mapping[str, str], **_: Any) -> None:
            self.campaigns.on_job_event(namespace, labels)

    async def _on_pool(self, name: str, **_: Any) -> None:
        """A pool appeared, changed or went: re-assign (the servers follow its status)."""
        self.pools.kick(name, delay=0.0)

    async def _on_plan(self, name: str, **_: Any) -> None:
        """A plan's spec changed (or the operator started): a key on the plans' queue."""
        self.plans.kick(name, delay=0.0)
