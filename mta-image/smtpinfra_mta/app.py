"""The MTA runtime: wires config, tenants, spool, scheduler, listeners and HTTP together.

Lifecycle: ``start()`` recovers the spool and requeues it before any listener opens, so a restart
never acknowledges new mail ahead of recovering the old; ``drain()`` answers new sessions with 421,
lets in-flight ones finish, then stops delivery; ``reload()`` swaps config-derived state in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from smtpinfra_mta import quota
from smtpinfra_mta.addrstats import AddressStats
from smtpinfra_mta.clock import Clock, clock_from_env
from smtpinfra_mta.config import MtaConfig, Tenant, load_config
from smtpinfra_mta.counters import Counters
from smtpinfra_mta.dkim_sign import DkimSigner
from smtpinfra_mta.dnsmx import MxResolver
from smtpinfra_mta.erasure import erase, load_secret, make_hasher
from smtpinfra_mta.handoff import HandoffClient, handoff_endpoint
from smtpinfra_mta.headers import HeaderLimits
from smtpinfra_mta.inbound import InboundReports
from smtpinfra_mta.limits import ConnectionBudget, MemoryBudget
from smtpinfra_mta.metrics import HttpLimits, HttpServer, Metrics, Response, read_token
from smtpinfra_mta.outcomes import OutcomeStore
from smtpinfra_mta.protocol import ListenerKind
from smtpinfra_mta.quota_pg import PostgresQuotas, QuotaStoreError
from smtpinfra_mta.scheduler import Scheduler
from smtpinfra_mta.server import make_protocol_factory
from smtpinfra_mta.spool import ACCEPT_SHARD, Spool, SpooledMessage, accept_shards
from smtpinfra_mta.suppression import SuppressionStore, open_store
from smtpinfra_mta.tenants import TenantDirectory
from smtpinfra_mta.throttle import WarmupGate
from smtpinfra_mta.tlsreload import ReloadingTls
from smtpinfra_mta.unsubscribe import UnsubscribeService
from smtpinfra_mta.unsubscribe import load_keys as load_unsubscribe_keys
from smtpinfra_mta.verp import Verp, load_keys, load_or_create_key

log = logging.getLogger(__name__)
# aiosmtpd logs every command line at INFO and every DATA line at DEBUG: message bodies, addresses.
# The MTA promises never to log bodies or credentials, whatever the root log level is.
logging.getLogger("mail.log").setLevel(logging.ERROR)


Role = Literal["all", "accept", "deliver"]
TLS_CHECK_SECONDS = 2.0


class MtaApp:
    """One MTA process. ``role`` is "all" normally; with ``delivery.separate_process`` the SMTP process runs
    "accept" (listeners, its own spool shard, quotas, idempotency) and hands each committed message to
    ``forward``; the delivery process runs "deliver" (scheduler, shaping, warm-up, DSNs, reports)."""

    def __init__(self, cfg: MtaConfig, config_path: Path | None = None, role: Role = "all",
                 shard: str = ACCEPT_SHARD) -> None:
        self.cfg = cfg
        self.config_path = config_path
        self.role = role
        self.metrics = Metrics()
        self.tenants = TenantDirectory(cfg)
        self.signer = DkimSigner(cfg.dkim)
        directory = cfg.spool.directory / shard if role == "accept" else cfg.spool.directory
        # the accepting process never delivers, so caching content there would only hold memory
        self.spool = Spool(directory, fsync=cfg.spool.fsync, group_commit_window=cfg.spool.group_commit_window,
                           idempotency_retention=cfg.spool.idempotency_retention,
                           content_cache_bytes=0 if role == "accept" else 64 * 1024 * 1024)
        self.forward: Callable[[SpooledMessage], None] | None = None  # role "accept": to the delivery process
        self._recovered_ids: set[str] = set()  # role "deliver": found by the startup scan, maybe also forwarded
        self.counters: Counters | None = None
        self.outcomes: OutcomeStore | None = None  # per-campaign outcomes, tenants' window figures
        self.clock: Clock = clock_from_env()  # day boundaries and warm-up caps (a test clock via env)
        self.addr_stats: AddressStats | None = None  # per source address figures (the delivering side)
        self.shared_quotas: PostgresQuotas | None = None  # quota_store.url: the replicas' shared counters
        self.verp: Verp | None = None
        self.scheduler: Scheduler | None = None
        self.suppression: SuppressionStore | None = None
        self.draining = False
        self.sessions = 0
        self.processes = cfg.listeners.processes if role == "accept" else 1  # receiving processes sharing limits
        self.connections = ConnectionBudget(self.processes)
        self.data_memory = MemoryBudget(cfg.limits.max_data_memory // self.processes)
        self.inherited: list[tuple[ListenerKind, socket.socket]] = []
        """Listening sockets of the first receiving process (the others accept on them instead of binding)."""
        self.listen_fds: list[tuple[ListenerKind, int]] = []
        self.ready = False
        self.listen_ports: dict[str, list[tuple[str, int]]] = {}
        self.http_port: int | None = None
        self.mta_sts_port: int | None = None  # the HTTPS listener of the MTA-STS policy (http.mta_sts_port)
        self._servers: list[asyncio.Server] = []
        self._http: HttpServer | None = None
        self._sessions_idle = asyncio.Event()
        self._sessions_idle.set()
        self._watch_task: asyncio.Task[None] | None = None
        self.tls: ReloadingTls | None = None  # the listeners' certificate, reloaded when its files change
        self._tls_task: asyncio.Task[None] | None = None
        self.inbound: InboundReports | None = None  # reports received on port 25 (the delivering side)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, *, http: bool = True, watch_config: bool = False) -> None:
        self.cfg.spool.directory.mkdir(parents=True, exist_ok=True)
        # Quota counters are only touched by the accepting side and warm-up counters only by the delivering
        # side, so the two processes of separate_process never share a key (no stale cache across them).
        self.counters = Counters(self.cfg.spool.directory / "counters.sqlite", cache=self.processes == 1)
        if self.role != "deliver" and self.cfg.quota_store.url is not None:
            self.shared_quotas = PostgresQuotas(self.cfg.quota_store.url)
            try:
                await self.shared_quotas.open()
            except QuotaStoreError as exc:  # submissions get 451 until it answers; nothing else waits
                log.error("quota store unavailable at start", extra={"error": str(exc)})
        # one file for both processes of separate_process: each writes what it sees, reads are fresh
        self.outcomes = OutcomeStore(self.cfg.spool.directory / "outcomes.sqlite")
        recovered = await self.spool.open()
        self.spool.on_committed = self._committed
        # every role: the accepting process serves /unsubscribe/ and /erase on its HTTP listener
        self.suppression = open_store(self.cfg.suppression.url)
        self.suppression.hasher = make_hasher(await asyncio.to_thread(load_secret, self.cfg))
        await self.suppression.open()
        if self.role != "accept":
            self.addr_stats = AddressStats(self.cfg.spool.directory / "addresses.sqlite", self.clock,
                                           self.cfg.clock.zone)
            self.scheduler = Scheduler(self.cfg, self.spool, MxResolver(self.cfg.delivery.resolver),
                                       WarmupGate(self.cfg.throttling, self.addr_stats), self.metrics,
                                       suppression=self.suppression)
            self.metrics.show_warmup_caps(self.cfg.throttling.warmup)
            self.verp = self._make_verp(self.cfg)
            self.scheduler.verp = self.verp
            self.scheduler.outcomes = self.outcomes
            self.scheduler.handoff = HandoffClient(self._handoff_token)
            self.inbound = InboundReports(self.cfg.bounces, self.cfg.spool.directory, self.metrics,
                                          self.suppression, fsync=self.cfg.spool.fsync)
            self.inbound.verp = self.verp
            self.inbound.outcomes = self.outcomes
            self.inbound.unsubscribe = self._mail_unsubscribe
            self.inbound.on_outcome = self._attribute_report
            await self.inbound.start()
            if self.role == "deliver":  # every receiving process's shard, also those of a larger earlier N
                for name in accept_shards(self.cfg.spool.directory, self.cfg.listeners.processes):
                    shard = Spool(self.cfg.spool.directory / name, fsync=self.cfg.spool.fsync)
                    self.scheduler.shards[name] = shard
                    from_shard = await shard.open(view=True)
                    for msg in from_shard:
                        msg.shard = name
                        self._recovered_ids.add(msg.id)
                    recovered += from_shard
            for msg in recovered:
                self._dispatch(msg)
            if recovered:
                log.info("spool recovered", extra={"messages": len(recovered)})
            self.scheduler.start()
        if self.role != "deliver" and self.cfg.tls is not None:
            self.tls = ReloadingTls(self.cfg.tls.cert_file, self.cfg.tls.key_file)
        if self.role != "deliver":
            await self._open_listeners()
        if http:
            self._http = HttpServer(self.metrics, lambda: self.ready and not self.draining, self.stats,
                                    self._refresh_gauges,
                                    lambda: self.cfg.mta_sts.policy if self.cfg.mta_sts is not None else None,
                                    stats_token=self._stats_token,
                                    limits=HttpLimits(max_connections=self.cfg.http.max_connections,
                                                      request_timeout=self.cfg.http.request_timeout),
                                    unsubscribe=self._unsubscribe, erase=self._erase,
                                    # peers hand mail to the delivering process, which queues it
                                    handoff=None if self.role == "accept" else handoff_endpoint(
                                        self.spool, lambda: self.cfg, self.metrics, self._handoff_token))
            port = self.cfg.http.delivery_port if self.role == "deliver" else self.cfg.http.port
            self.http_port = await self._http.start(self.cfg.http.bind, port)
            if self.role != "deliver" and self.cfg.http.mta_sts_port is not None and self.tls is not None:
                self.mta_sts_port = await self._http.start(self.cfg.http.bind, self.cfg.http.mta_sts_port,
                                                           tls=self.tls.front, mta_sts_only=True)
        if self.tls is not None:
            self._tls_task = asyncio.create_task(self._watch_tls(), name="tls-watch")
        if watch_config and self.config_path is not None:
            self._watch_task = asyncio.create_task(self._watch_config(), name="config-watch")
        self.ready = True

    async def _open_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        tls_ctx = self.tls.front if self.tls is not None else None
        for kind, sock in self.inherited:
            server = await loop.create_server(make_protocol_factory(self, kind, tls_ctx), sock=sock,
                                              ssl=tls_ctx if kind == "implicit_tls" else None)
            self._servers.append(server)
        if self.inherited:
            return
        kinds: list[ListenerKind] = ["submission", "implicit_tls", "inbound"]
        for kind in kinds:
            listener = getattr(self.cfg.listeners, kind)
            if not listener.enabled:
                continue
            factory = make_protocol_factory(self, kind, tls_ctx)
            for host in listener.bind:
                server = await loop.create_server(
                    factory, host=host, port=listener.port, reuse_address=True,
                    ssl=tls_ctx if kind == "implicit_tls" else None,
                )
                self._servers.append(server)
                self.listen_fds.extend((kind, sock.fileno()) for sock in server.sockets)
                port = int(server.sockets[0].getsockname()[1])
                self.listen_ports.setdefault(kind, []).append((host, port))
                log.info("listening", extra={"listener": kind, "host": host, "port": port})

    def close_listeners(self) -> None:
        """Stop accepting (sessions already open go on): inherited sockets are then free for a successor."""
        for s in self._servers:
            s.close()

    async def drain(self, grace: float = 30.0) -> None:
        """SIGTERM: refuse new sessions (421), finish open ones, then stop delivery and close."""
        self.draining = True
        self.ready = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._sessions_idle.wait(), timeout=grace)
        await self.stop()

    async def stop(self) -> None:
        self.ready = False
        if self._watch_task is not None:
            self._watch_task.cancel()
        if self._tls_task is not None:
            self._tls_task.cancel()
        for s in self._servers:
            s.close()
        self._servers.clear()
        if self.inbound is not None:
            await self.inbound.stop()
        if self.scheduler is not None:
            await self.scheduler.stop(grace=5.0)
            for shard in self.scheduler.shards.values():
                await shard.close()
        await self.spool.close()
        if self.suppression is not None:
            await self.suppression.close()
        if self._http is not None:
            await self._http.close()
        if self.counters is not None:
            self.counters.close()
            self.counters = None
        if self.outcomes is not None:
            self.outcomes.close()
            self.outcomes = None
        if self.addr_stats is not None:
            self.addr_stats.close()
            self.addr_stats = None
        if self.shared_quotas is not None:
            await self.shared_quotas.close()
            self.shared_quotas = None

    # ------------------------------------------------------------------ sessions

    def session_opened(self) -> None:
        self.sessions += 1
        self._sessions_idle.clear()
        self.metrics.sessions.set(self.sessions)

    def session_closed(self) -> None:
        self.sessions -= 1
        self.metrics.sessions.set(self.sessions)
        if self.sessions <= 0:
            self._sessions_idle.set()

    def quota_refusal(self, tenant: Tenant, n: int) -> str | None:
        """A reply when ``n`` more recipients would not fit the tenant's quota now (RCPT; DATA reserves)."""
        assert self.counters is not None
        return quota.early_refusal(self.counters, tenant, n, shared=self.shared_quotas is not None)

    async def reserve_quota(self, tenant: Tenant, n: int) -> tuple[str | None, quota.Reservation | None]:
        """Count ``n`` recipients against the quota before the commit; the caller keeps or releases it."""
        assert self.counters is not None
        return await quota.reserve(self.counters, tenant, n, self.shared_quotas)

    @property
    def header_limits(self) -> HeaderLimits:
        lim = self.cfg.limits
        return HeaderLimits(max_bytes=lim.max_header_bytes, max_fields=lim.max_header_fields)

    async def sign(self, content: bytes, from_domain: str) -> bytes:
        if not self.signer.keys_for(from_domain):
            return content
        return await asyncio.to_thread(self.signer.sign, content, from_domain)

    def _committed(self, msg: SpooledMessage) -> None:
        """Spool hook: a message is durably on disk (called by the committer, even if the client left)."""
        if msg.kind == "dsn":
            return  # DSNs are queued by the scheduler that made them
        if msg.kind != "inbound" and not msg.handed_off:  # a peer's hand-off was accepted (and counted) there
            self.metrics.accepted.labels(tenant=msg.tenant, pool=msg.pool,
                                         listener=msg.listener or "unknown").inc(len(msg.rcpts))
            if self.outcomes is not None:
                self.outcomes.accepted(msg)
            log.info("accepted", extra={"id": msg.id, "tenant": msg.tenant, "rcpts": len(msg.rcpts),
                                        "size": msg.size})
        if self.role == "accept":
            if self.forward is not None:
                self.forward(msg)  # if the delivery process is down, its restart finds the file anyway
            return
        self._dispatch(msg)

    def _dispatch(self, msg: SpooledMessage) -> None:
        if msg.kind == "inbound":
            self._process_inbound(msg)
        elif self.scheduler is not None:
            self.scheduler.submit(msg)

    def ingest(self, msg: SpooledMessage, shard: str = ACCEPT_SHARD) -> None:
        """Role "deliver": a message a receiving process committed to its spool shard."""
        if self.scheduler is None or shard not in self.scheduler.shards:
            log.error("message from an unknown spool shard ignored until the next start",
                      extra={"id": msg.id, "shard": shard})
            return
        msg.shard = shard
        if msg.id in self._recovered_ids:  # already queued by the startup scan
            self._recovered_ids.discard(msg.id)
            return
        self._dispatch(msg)

    def _process_inbound(self, msg: SpooledMessage) -> None:
        """A report received on port 25: handled off the delivery path, never left queued (``inbound``)."""
        assert self.inbound is not None, "inbound reports are handled by the delivering process"
        spool = self.scheduler.spool_of(msg) if self.scheduler is not None else self.spool
        self.inbound.submit(msg, spool)

    def _make_verp(self, cfg: MtaConfig) -> Verp | None:
        """VERP needs a return-path domain that our port 25 actually receives; otherwise plain senders.

        The keys come from ``bounces.verp_key_files`` (the server's shared, rotatable Secret); without
        them, from one key file, generated in the spool directory if need be (one replica only).
        """
        b = cfg.bounces
        domain = b.return_path_domain
        inbound = cfg.listeners.inbound
        if not b.verp or domain is None or not inbound.enabled or domain not in inbound.domains:
            return None
        if b.verp_key_files:
            return Verp(load_keys(b.verp_key_files), domain)
        return Verp(load_or_create_key(b.verp_key_file or cfg.spool.directory / "verp.key"), domain)

    # ------------------------------------------------------------------ reload

    def reload(self, cfg: MtaConfig) -> None:
        """Apply a new config without dropping sessions or queued mail (listener changes need a restart)."""
        self.cfg = cfg
        self.tenants = TenantDirectory(cfg)
        self.signer = DkimSigner(cfg.dkim)
        self.data_memory.ceiling = cfg.limits.max_data_memory // self.processes
        if self.scheduler is not None:
            self.scheduler.update_config(cfg)
            try:
                self.verp = self._make_verp(cfg)
            except (OSError, ValueError) as exc:
                log.error("VERP key unusable; keeping the previous one", extra={"error": str(exc)})
            self.scheduler.verp = self.verp
            if self.inbound is not None:
                self.inbound.reload(cfg.bounces, self.verp)
            if self.addr_stats is not None:
                self.addr_stats.tz = cfg.clock.zone
                self.scheduler.warmup = WarmupGate(cfg.throttling, self.addr_stats)
                self.metrics.show_warmup_caps(cfg.throttling.warmup)
        log.info("config reloaded")

    async def _watch_config(self) -> None:
        """Reload when the config file or a file it references (credentials, DKIM keys) changes.

        Mounted Secrets are updated independently of the ConfigMap: a new tenant password, or
        a credentials file that appears after the config naming it, must be picked up too.
        """
        assert self.config_path is not None
        last = _stamps(self.config_path, self.cfg)
        while True:
            await asyncio.sleep(2.0)
            now = _stamps(self.config_path, self.cfg)
            if now == last:
                continue
            last = now
            try:
                cfg = await asyncio.to_thread(load_config, self.config_path)
            except Exception as exc:
                log.error("config reload failed; keeping the running config", extra={"error": str(exc)})
                continue
            self.reload(cfg)

    async def _watch_tls(self) -> None:
        """Serve a renewed certificate once its mounted files change (no restart, sessions kept)."""
        assert self.tls is not None
        while True:
            await asyncio.sleep(TLS_CHECK_SECONDS)
            await asyncio.to_thread(self.tls.check)

    # ------------------------------------------------------------------ unsubscribe and erasure

    def _unsubscribe_service(self) -> UnsubscribeService | None:
        """The endpoint's service over the current config (keys re-read per request); None without keys."""
        if self.suppression is None or not self.cfg.unsubscribe.keys:
            return None
        keys = self.cfg.unsubscribe.keys
        return UnsubscribeService(lambda: load_unsubscribe_keys(keys), self.suppression, self.outcomes)

    async def _mail_unsubscribe(self, subject: str) -> bool:
        """A message to an inbound address whose subject carries an unsubscribe token (the mailto: link)."""
        service = self._unsubscribe_service()
        return service is not None and await service.by_mail(subject)

    async def _unsubscribe(self, method: str, path: str, content_type: str, body: bytes) -> Response:
        """``/unsubscribe/<token>`` (see :mod:`smtpinfra_mta.unsubscribe`)."""
        service = self._unsubscribe_service()
        if service is None:
            return "404 Not Found", "text/plain", b"not found\n"
        try:
            return await service.handle(method, path, content_type, body)
        except Exception as exc:  # the store is down: the client may retry; nothing was half done
            log.error("unsubscribe failed", extra={"error": str(exc)})
            return "503 Service Unavailable", "text/plain", b"try again later\n"

    async def _erase(self, method: str, path: str, content_type: str, body: bytes) -> Response:
        """``POST /erase`` with JSON ``{"tenant": ..., "address": ...}`` (bearer token as for /stats)."""
        if method != "POST":
            return "405 Method Not Allowed", "text/plain", b"method not allowed\n"
        try:
            req = json.loads(body)
            tenant, address = str(req["tenant"]), str(req["address"])
        except (ValueError, KeyError, TypeError):
            return "400 Bad Request", "text/plain", b'expected JSON {"tenant": ..., "address": ...}\n'
        if self.suppression is None:
            return "503 Service Unavailable", "text/plain", b"not ready\n"
        try:
            result = await erase(self.suppression, self.cfg.spool.directory, tenant, address, self.outcomes)
        except ValueError as exc:
            return "400 Bad Request", "text/plain", f"{exc}\n".encode()
        except Exception as exc:
            log.error("erase failed", extra={"tenant": tenant, "error": str(exc)})
            return "503 Service Unavailable", "text/plain", b"erase failed; retry\n"
        return "200 OK", "application/json", json.dumps(result.as_json()).encode()

    # ------------------------------------------------------------------ stats

    def _refresh_gauges(self) -> None:
        if self.scheduler is not None:
            self.metrics.queue_depth.set(len(self.spool.queued_ids()))
            self.metrics.oldest_age.set(self.scheduler.oldest_age())

    def _handoff_token(self) -> str | None:
        return read_token(self.cfg.http.handoff_token_file)

    def _stats_token(self) -> str | None:
        return read_token(self.cfg.http.stats_token_file)

    def stats(self) -> dict[str, Any]:
        queued = self.spool.queued_ids()
        out = {
            "hostname": self.cfg.hostname,
            "time": time.time(),
            "ready": self.ready and not self.draining,
            "sessions": self.sessions,
            "queue": {"messages": len(queued),
                      "oldest_age_seconds": self.scheduler.oldest_age() if self.scheduler else 0.0},
            "automation": {k: {"rule": v.rule, "action": v.action, "until": v.until}
                           for k, v in (self.scheduler.automation.active.items() if self.scheduler else [])},
            "tenants": self._tenant_usage(),
            # the delivering process of separate_process reports them; the accepting one would repeat them
            "campaigns": self.outcomes.campaigns() if self.outcomes is not None and self.role != "accept" else {},
        }
        if self.addr_stats is not None:  # the delivering process only: the accepting one sends nothing
            out["addresses"] = self.addr_stats.snapshot()
        return out

    def _attribute_report(self, rcpt: str, event: str) -> None:
        """A complaint or asynchronous bounce counts against the address that last sent to ``rcpt``."""
        if self.addr_stats is None:
            return
        if event == "complaint":
            self.addr_stats.attribute(rcpt, "complained")
        elif event == "hard_bounce":
            self.addr_stats.attribute(rcpt, "bounced")

    def _tenant_usage(self) -> dict[str, Any]:
        """Recipients accepted per configured tenant in the current UTC hour and day (the quota counters).

        The window ids say which hour and day the figures belong to, so a reader summing several
        pods can tell a pod that has not rolled over yet. The delivering process of
        `delivery.separate_process` never counts quotas: it reports none.
        """
        from smtpinfra_mta.counters import window_id

        if self.counters is None or self.role == "deliver":
            return {}
        now = time.time()
        usage: dict[str, Any] = {
            "hour": window_id("hour", now), "day": window_id("day", now),
            "accepted": {t.name: {"hour": self.counters.get(f"quota:{t.name}", "hour", now),
                                  "day": self.counters.get(f"quota:{t.name}", "day", now)}
                         for t in self.cfg.tenants},
        }
        if self.outcomes is not None:  # tenants.<name>.window: the suspension figures
            for t in self.cfg.tenants:
                usage.setdefault(t.name, {})["window"] = self.outcomes.window(t.name, t.suspension_window, now)
        return usage


def _stamps(config_path: Path, cfg: MtaConfig) -> list[tuple[float, int] | None]:
    """Stamps of the config file and of every file the running config reads on reload."""
    files = [config_path]
    files += [t.credentials_file for t in cfg.tenants if t.credentials_file is not None]
    files += [k.key_file for k in cfg.dkim]
    files += cfg.bounces.verp_key_files  # a rotated VERP Secret: the new key signs from the next reload
    return [_stamp(f) for f in files]


def _stamp(path: Path) -> tuple[float, int] | None:
    """mtime+inode of the resolved file: ConfigMap updates swap a symlink, which changes both."""
    try:
        st = path.resolve().stat()
    except OSError:
        return None
    return (st.st_mtime, st.st_ino)
