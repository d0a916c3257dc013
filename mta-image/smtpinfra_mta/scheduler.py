"""The delivery scheduler: ready queues per (pool, recipient domain), retries, bounces, shaping.

Slightly over 500 lines: retries, bounces, DSNs and hand-offs all change one queue's state; which
source address sends (or which peer replica takes over) is decided in ``sources``.

Each spooled message is split into one work item per recipient domain. A domain queue opens up to
``connection_limit`` connections; each connection picks a source IP of the tenant's pool that is
under its warm-up caps, binds it, and sends items one after another (connection reuse) until the
queue is empty or ``max_deliveries_per_connection`` is reached. Every recipient ends as delivered,
bounced (DSN to the sender) or suppressed, each recorded durably in the spool before it is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from smtpinfra_mta.bounces import RecipientFailure, build_dsn, classify
from smtpinfra_mta.config import MtaConfig, SourceIp
from smtpinfra_mta.delivery import ConnectFailed, OutboundConnection, Reply
from smtpinfra_mta.dnsmx import DnsPermanentError, DnsTemporaryError, MxResolver, MxResult, provider_for
from smtpinfra_mta.handoff import HandoffClient, HandoffError
from smtpinfra_mta.sources import SourcePicker, may_send
from smtpinfra_mta.spool import Spool, SpooledMessage, new_message_id
from smtpinfra_mta.tenants import domain_of
from smtpinfra_mta.throttle import Automation, RateLimiter, Shaping, WarmupGate, effective_shaping, site_key
from smtpinfra_mta.verp import Verp

if TYPE_CHECKING:
    from smtpinfra_mta.metrics import Metrics
    from smtpinfra_mta.outcomes import OutcomeStore
    from smtpinfra_mta.suppression import SuppressionStore

log = logging.getLogger(__name__)


def retry_delay(schedule: list[float], attempts: int) -> float:
    """Delay before retry number ``attempts`` (1-based); the last step repeats."""
    return schedule[min(max(attempts, 1), len(schedule)) - 1]


@dataclass
class WorkItem:
    """The recipients of one message that share a destination domain."""

    msg: SpooledMessage
    domain: str
    rcpts: list[str]
    attempts: int = 0
    last_reply: Reply | None = None
    remote_mta: str | None = None
    state: str = "ready"  # ready | taken | deferred; a crashed connection requeues its "taken" items


@dataclass
class DomainQueue:
    pool: str
    domain: str
    ready: deque[WorkItem] = field(default_factory=deque)
    active: int = 0
    not_before: float = 0.0  # suspension / warm-up hold: no new connection before this (monotonic)
    idle: int = 0  # connections waiting for more work (connection reuse)
    more: asyncio.Event = field(default_factory=asyncio.Event)




class Scheduler:
    def __init__(self, cfg: MtaConfig, spool: Spool, resolver: MxResolver, warmup: WarmupGate,
                 metrics: Metrics | None = None, suppression: SuppressionStore | None = None) -> None:
        self.cfg = cfg
        self.spool = spool
        self.resolver = resolver
        self.warmup = warmup
        self.stats = warmup.stats  # per address x provider x day figures; caps are counted from them
        self.clock = warmup.stats.clock
        self.metrics = metrics
        self.suppression = suppression
        self.outcomes: OutcomeStore | None = None  # per-campaign and per-tenant outcome counters
        self.automation = Automation(cfg.throttling.automation)
        self.rates = RateLimiter()
        self.queues: dict[tuple[str, str], DomainQueue] = {}
        self._delayed: list[tuple[float, int, WorkItem]] = []
        self._seq = itertools.count()
        self._site_active: dict[tuple[str, str], int] = defaultdict(int)
        self.sources = SourcePicker()
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._total_active = 0
        self.verp: Verp | None = None  # set by the app when VERP return paths are on
        self.shards: dict[str, Spool] = {}  # other spools this scheduler delivers from (separate_process)
        self.handoff: HandoffClient | None = None  # set by the app when peers may take mail over

    def update_config(self, cfg: MtaConfig) -> None:
        """Hot reload: new limits apply to the next connection; queued work is untouched."""
        self.cfg = cfg
        old = self.automation.active
        self.automation = Automation(cfg.throttling.automation)
        self.automation.active = old
        for q in self.queues.values():  # a released or uncapped address may send at once
            q.not_before = 0.0
        self._wakeup.set()

    # ------------------------------------------------------------------ intake

    def submit(self, msg: SpooledMessage) -> None:
        """Queue every pending recipient of a committed message, grouped by domain."""
        by_domain: dict[str, list[str]] = defaultdict(list)
        for r in msg.pending:
            by_domain[domain_of(r)].append(r)
        for domain, rcpts in by_domain.items():
            if self._uses_verp(msg):
                for r in rcpts:  # each recipient gets its own return path, so its own transaction
                    self._make_ready(WorkItem(msg, domain, [r]))
            else:
                self._make_ready(WorkItem(msg, domain, rcpts))

    def _uses_verp(self, msg: SpooledMessage) -> bool:
        return self.verp is not None and msg.kind == "submission" and bool(msg.mail_from)

    def return_path(self, item: WorkItem) -> str:
        """The envelope sender on the wire: a VERP address for tenant mail, else the one received."""
        if self.verp is not None and self._uses_verp(item.msg) and len(item.rcpts) == 1:
            return self.verp.address(item.msg.tenant, item.rcpts[0])
        return item.msg.mail_from

    def _make_ready(self, item: WorkItem) -> None:
        q = self.queues.get((item.msg.pool, item.domain))
        if q is None:
            q = self.queues[(item.msg.pool, item.domain)] = DomainQueue(item.msg.pool, item.domain)
        item.state = "ready"
        q.ready.append(item)
        q.more.set()
        self._wakeup.set()

    def _defer(self, item: WorkItem, delay: float) -> None:
        item.state = "deferred"
        heapq.heappush(self._delayed, (time.monotonic() + delay, next(self._seq), item))
        self._wakeup.set()

    def queue_depth(self) -> int:
        return sum(len(q.ready) for q in self.queues.values()) + len(self._delayed) + self._inflight_items

    _inflight_items = 0

    def oldest_age(self) -> float:
        now = time.time()
        items = [i for q in self.queues.values() for i in q.ready] + [i for _, _, i in self._delayed]
        return max((now - i.msg.received_at for i in items), default=0.0)

    # ------------------------------------------------------------------ run loop

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="scheduler")

    async def stop(self, grace: float = 30.0) -> None:
        """Stop opening connections; let in-flight transactions finish for up to ``grace`` seconds."""
        self._closing = True
        self._wakeup.set()
        for q in self.queues.values():
            q.more.set()  # release connections idling for reuse
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)
        for t in list(self._tasks):
            t.cancel()
        if self._runner is not None:
            self._runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._runner

    async def _run(self) -> None:
        while not self._closing:
            now = time.monotonic()
            while self._delayed and self._delayed[0][0] <= now:
                _, _, item = heapq.heappop(self._delayed)
                self._make_ready(item)
            next_wake = self._delayed[0][0] - now if self._delayed else 60.0
            for q in list(self.queues.values()):
                if not q.ready:
                    if q.active == 0:
                        del self.queues[(q.pool, q.domain)]
                    continue
                if q.not_before > now:
                    next_wake = min(next_wake, q.not_before - now)
                    continue
                limit = self._domain_connection_limit(q)
                if q.idle >= len(q.ready):
                    continue  # an open idle connection will pick these up
                while q.ready and q.active < limit and self._total_active < self.cfg.delivery.max_concurrency:
                    q.active += 1
                    self._total_active += 1
                    task = asyncio.create_task(self._connection(q), name=f"deliver-{q.domain}")
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    if len(q.ready) <= q.active:
                        break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=max(0.01, next_wake))

    def _domain_connection_limit(self, q: DomainQueue) -> int:
        return effective_shaping(self.cfg.throttling.rules, q.domain, None, "").connection_limit

    # ------------------------------------------------------------------ one connection

    async def _connection(self, q: DomainQueue) -> None:
        holding: list[WorkItem] = []
        try:
            await self._connection_inner(q, holding)
        except Exception:
            log.exception("delivery connection crashed", extra={"domain": q.domain})
            # Whatever this connection had taken is still in the spool: put it back, never drop it.
            for item in holding:
                if item.state == "taken":
                    self._defer(item, retry_delay(self.cfg.delivery.retry_schedule, 1))
        finally:
            q.active -= 1
            self._total_active -= 1
            self._wakeup.set()

    async def _take(self, q: DomainQueue, holding: list[WorkItem]) -> WorkItem | None:
        while q.ready:
            item = q.ready.popleft()
            pending = [r for r in item.rcpts if r not in item.msg.done]
            if not pending:
                continue
            item.rcpts = pending
            item.state = "taken"
            holding.append(item)
            if self.suppression is not None and item.msg.kind != "relay":  # relayed mail has no tenant list
                keep: list[str] = []
                suppressed: list[str] = []
                try:
                    for r in pending:
                        (suppressed if await self.suppression.is_suppressed(item.msg.tenant, r) else keep).append(r)
                except Exception as exc:
                    # Cannot tell whether the recipient opted out: wait rather than risk sending.
                    log.error("suppression lookup failed; deferring", extra={"error": str(exc)})
                    self._defer(item, 30.0)
                    continue
                if suppressed:
                    await self._record(item.msg, [(r, "suppressed") for r in suppressed])
                    self._count("suppressed", item, len(suppressed))
                if not keep:
                    item.state = "done"
                    continue
                item.rcpts = keep
            return item
        return None

    async def _connection_inner(self, q: DomainQueue, holding: list[WorkItem]) -> None:
        item = await self._take(q, holding)
        if item is None:
            return
        try:
            route = self.cfg.route(q.domain)
            mx = await (self.resolver.route(route) if route is not None else self.resolver.lookup(q.domain))
        except DnsPermanentError as exc:
            await self._fail_permanent(item, Reply(550, f"{exc.status} {exc}"), None)
            while (more := await self._take(q, holding)) is not None:
                await self._fail_permanent(more, Reply(550, f"{exc.status} {exc}"), None)
            return
        except DnsTemporaryError as exc:
            await self._fail_temporary(item, Reply(451, f"4.4.3 {exc}"), None)
            return
        provider = provider_for(mx.host_names, self.cfg.throttling.providers)
        site = site_key(q.domain, provider)
        source, shaping, wait = self.sources.pick(self.cfg, self.warmup, self.automation, q.domain, item.msg.pool,
                                                  site, provider, self.clock.recheck)
        if source is None and await self._hand_off(item, provider):
            return
        if source is None:
            # Every source IP of the pool is capped or suspended: hold the queue, not counted as an attempt.
            item.state = "ready"
            q.ready.appendleft(item)
            q.not_before = time.monotonic() + wait
            if self.metrics is not None:
                self.metrics.throttle_waits.labels(reason="warmup_or_suspend").inc()
            return
        path = (source.address, site)
        if self._site_active[path] >= shaping.connection_limit:
            item.state = "ready"
            q.ready.appendleft(item)
            q.not_before = time.monotonic() + 0.05
            return
        self._site_active[path] += 1
        try:
            await self._deliver_over_connection(q, item, mx, source, shaping, site, provider, holding)
        finally:
            self._site_active[path] -= 1

    async def _hand_off(self, item: WorkItem, provider: str | None) -> bool:
        """Give an item no address here may send now to a peer replica that can (``smtpinfra_mta.handoff``).

        True when it is dealt with: handed over, or deferred after a failed hand-off (counted as an
        attempt, so an unreachable peer cannot keep it past the queue lifetime).
        """
        if self.handoff is None or item.msg.handed_off:
            return False
        try:
            pool = self.cfg.pool(item.msg.pool)
        except KeyError:
            return False
        peer = self.sources.peer(pool, self.warmup, provider)
        if peer is None:
            return False
        try:
            content = await self.spool_of(item.msg).content(item.msg.id)
            answer = await self.handoff.send(peer, item.msg, item.rcpts, content)
        except (OSError, HandoffError) as exc:
            await self._fail_temporary(item, Reply(451, f"4.4.0 hand-off to a peer replica failed: {exc}"), None)
            return True
        item.state = "done"
        await self._record(item.msg, [(r, "handed-off") for r in item.rcpts])
        if self.metrics is not None:
            self.metrics.handed_over.labels(pool=pool.name, direction="sent").inc(len(item.rcpts))
        log.info("handed off", extra={"id": item.msg.id, "domain": item.domain, "rcpts": len(item.rcpts),
                                      "peer": peer.host, "answer": answer[:80]})
        return True

    async def _wait_rate(self, key: str, rate: float | None) -> None:
        if rate is None:
            return
        delay = self.rates.reserve(key, rate)
        if delay > 0:
            if self.metrics is not None:
                self.metrics.throttle_waits.labels(reason="rate").inc()
            await asyncio.sleep(delay)

    async def _deliver_over_connection(self, q: DomainQueue, item: WorkItem, mx: MxResult, source: SourceIp,
                                       shaping: Shaping, site: str, provider: str | None,
                                       holding: list[WorkItem]) -> None:
        await self._wait_rate(f"conn:{source.address}:{site}", shaping.max_connection_rate)
        policy = self.cfg.delivery.starttls
        verify = False
        for tp in self.cfg.delivery.tls_policies:
            if tp.domain == q.domain:
                policy, verify = tp.mode, tp.verify
        conn: OutboundConnection | None = None
        last = Reply(451, "4.4.1 no MX host reachable")
        for host in mx.hosts:
            for addr in host.addresses:
                try:
                    conn = await OutboundConnection.open(
                        mx_host=host.name, address=addr, port=host.port or self.cfg.delivery.port,
                        source_ip=source.address,
                        ehlo_name=source.ehlo_name, starttls=policy, verify=verify,
                        connect_timeout=self.cfg.delivery.connect_timeout,
                        command_timeout=self.cfg.delivery.command_timeout,
                    )
                    break
                except ConnectFailed as exc:
                    last = exc.reply
                    self._observe(exc.reply, q.domain, site, source.address)
                    if exc.reply.permanent and exc.reply.code != 554:
                        break
            if conn is not None:
                break
        if conn is None:
            await self._fail_temporary(item, last, None)
            return
        log.info("connected", extra={"domain": q.domain, "mx": conn.mx_host, "source_ip": source.address,
                                     "tls": conn.tls})
        try:
            current: WorkItem | None = item
            while current is not None:
                rate = shaping.max_message_rate
                auto_rate = self.automation.rate_cap([f"domain:{q.domain}", site, f"ip:{source.address}"])
                if auto_rate is not None:
                    rate = min(rate, auto_rate) if rate is not None else auto_rate
                await self._wait_rate(f"msg:{source.address}:{site}", rate)
                fits, _ = self.warmup.room(source.address, provider)
                if fits == 0 or not may_send(self.cfg, current.msg.pool, source.address):
                    current.state = "ready"
                    q.ready.appendleft(current)
                    break
                if fits is not None and fits < len(current.rcpts):
                    # Only part of the item fits under today's caps: the rest waits as an item of its own.
                    rest = WorkItem(current.msg, current.domain, current.rcpts[fits:], current.attempts)
                    current.rcpts = current.rcpts[:fits]
                    q.ready.appendleft(rest)
                self.stats.add(source.address, provider, "sent", len(current.rcpts), rcpts=current.rcpts)
                usable = await self._send_item(conn, current, source, site, provider, q.domain)
                if not usable or conn.deliveries >= shaping.max_deliveries_per_connection or self._closing:
                    break
                if self.automation.suspended_for([f"domain:{q.domain}", site, f"ip:{source.address}"]) > 0:
                    break
                current = await self._take(q, holding)
                if current is None and self.cfg.delivery.idle_timeout > 0:
                    current = await self._wait_for_more(q, holding)
        finally:
            await conn.close()

    async def _wait_for_more(self, q: DomainQueue, holding: list[WorkItem]) -> WorkItem | None:
        """Keep the connection open a little for work that arrives shortly (connection reuse)."""
        q.idle += 1
        try:
            deadline = time.monotonic() + self.cfg.delivery.idle_timeout
            while not self._closing:
                q.more.clear()
                item = await self._take(q, holding)
                if item is not None:
                    return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(q.more.wait(), timeout=remaining)
                except TimeoutError:
                    return await self._take(q, holding)
            return None
        finally:
            q.idle -= 1

    async def _send_item(self, conn: OutboundConnection, item: WorkItem, source: SourceIp, site: str,
                         provider: str | None, domain: str) -> bool:
        try:
            content = await self.spool_of(item.msg).content(item.msg.id)
        except OSError as exc:
            log.error("spooled message unreadable", extra={"id": item.msg.id, "error": str(exc)})
            await self._fail_temporary(item, Reply(451, "4.3.0 local spool read error"), None)
            return True
        result = await conn.send(self.return_path(item), item.rcpts, content)
        delivered = [r for r, rep in result.per_rcpt.items() if rep.ok]
        perm: dict[str, Reply] = {r: rep for r, rep in result.per_rcpt.items() if rep.permanent}
        temp: dict[str, Reply] = {r: rep for r, rep in result.per_rcpt.items() if not rep.ok and not rep.permanent}
        labels = {"tenant": item.msg.tenant, "pool": item.msg.pool, "source_ip": source.address,
                  "provider": provider or "other"}
        if delivered:
            self.stats.add(source.address, provider, "delivered", len(delivered))
            await self._record(item.msg, [(r, "delivered") for r in delivered])
            if self.metrics is not None:
                self.metrics.delivered.labels(**labels).inc(len(delivered))
            log.info("delivered", extra={"id": item.msg.id, "domain": domain, "rcpts": len(delivered),
                                         "mx": conn.mx_host, "source_ip": source.address})
        for rep in {rep.line: rep for rep in list(perm.values()) + list(temp.values())}.values():
            self._observe(rep, domain, site, source.address)
        if perm:
            for rep in set(perm.values()):
                rcpts = [r for r, x in perm.items() if x == rep]
                await self._fail_permanent(WorkItem(item.msg, domain, rcpts, item.attempts), rep, conn.mx_host,
                                           source=source.address, provider=provider)
        if temp:
            # Retry with the first temporary reply as the reason (recipients of one item share a fate).
            rep = next(iter(temp.values()))
            await self._fail_temporary(WorkItem(item.msg, domain, list(temp), item.attempts), rep, conn.mx_host,
                                       source=source.address, provider=provider)
        item.state = "done"
        return result.connection_usable

    def _observe(self, reply: Reply, domain: str, site: str, source_ip: str) -> None:
        fired = self.automation.observe(reply.line, domain, site, source_ip)
        for name in fired:
            log.warning("automation rule fired", extra={"rule": name, "domain": domain, "site": site,
                                                        "source_ip": source_ip, "reply": reply.line[:200]})
            if self.metrics is not None:
                self.metrics.automation.labels(rule=name).inc()

    def _count(self, what: str, item: WorkItem, n: int, source: str = "", provider: str | None = None) -> None:
        if self.metrics is None:
            return
        labels = {"tenant": item.msg.tenant, "pool": item.msg.pool, "source_ip": source or "none",
                  "provider": provider or "other"}
        getattr(self.metrics, what).labels(**labels).inc(n)

    # ------------------------------------------------------------------ outcomes

    def spool_of(self, msg: SpooledMessage) -> Spool:
        """The spool holding ``msg``: the accepting process's when delivery runs in its own process."""
        return self.shards.get(msg.shard, self.spool)

    async def _record(self, msg: SpooledMessage, results: list[tuple[str, str]], *, failed: bool = False) -> None:
        await self.spool_of(msg).record_done(msg, results)  # the spool orders and batches these itself
        if self.outcomes is not None:
            self.outcomes.final(msg, results, failed=failed)

    async def _fail_temporary(self, item: WorkItem, reply: Reply, remote: str | None, *, source: str = "",
                              provider: str | None = None) -> None:
        item.attempts += 1
        item.last_reply = reply
        item.remote_mta = remote
        age = time.time() - item.msg.received_at
        if age >= self.cfg.delivery.max_queue_age:
            expired = Reply(reply.code if reply.code >= 500 else 550, f"4.4.7 message expired after "
                            f"{int(age)}s in queue; last error: {reply.line}")
            await self._bounce(item, expired, remote, status="4.4.7", source=source, provider=provider)
            return
        self._count("deferred", item, len(item.rcpts), source, provider)
        if self.outcomes is not None:
            self.outcomes.deferred(item.msg, item.rcpts)
        if source:
            self.stats.add(source, provider, "deferred", len(item.rcpts))
        delay = retry_delay(self.cfg.delivery.retry_schedule, item.attempts)
        log.info("deferred", extra={"id": item.msg.id, "domain": item.domain, "attempts": item.attempts,
                                    "retry_in": delay, "reply": reply.line[:200]})
        self._defer(item, delay)

    async def _fail_permanent(self, item: WorkItem, reply: Reply, remote: str | None, *, source: str = "",
                              provider: str | None = None) -> None:
        await self._bounce(item, reply, remote, status=None, source=source, provider=provider)

    async def _bounce(self, item: WorkItem, reply: Reply, remote: str | None, *, status: str | None,
                      source: str, provider: str | None) -> None:
        cls = classify(reply.code, reply.text)
        st = status or cls.status
        if not st.startswith(("4", "5")):
            st = "5.0.0"
        if self.metrics is not None:
            self.metrics.bounced.labels(tenant=item.msg.tenant, pool=item.msg.pool, source_ip=source or "none",
                                        provider=provider or "other", bounce_class=cls.bounce_class).inc(
                len(item.rcpts))
        log.info("bounced", extra={"id": item.msg.id, "domain": item.domain, "rcpts": len(item.rcpts),
                                   "class": cls.bounce_class, "status": st, "reply": reply.line[:200]})
        if source:
            self.stats.add(source, provider, "bounced", len(item.rcpts))
        failures = [RecipientFailure(r, st, reply.line, remote) for r in item.rcpts]
        # Never bounce a bounce (null sender), never DSN our own DSNs: that is how mail loops start.
        if item.msg.mail_from and item.msg.kind != "dsn":
            await self._send_dsn(item.msg, failures)
        if self.suppression is not None and cls.bounce_class == "hard" and status is None and item.msg.kind != "dsn":
            for r in item.rcpts:
                try:
                    await self.suppression.add(item.msg.tenant, r, f"hard bounce {st}")
                except Exception as exc:
                    log.error("suppression insert failed", extra={"error": str(exc)})
        item.state = "done"
        await self._record(item.msg, [(r, "bounced") for r in item.rcpts], failed=status is not None)

    async def _send_dsn(self, msg: SpooledMessage, failures: list[RecipientFailure]) -> None:
        try:
            original = await self.spool_of(msg).content(msg.id)
        except OSError:
            original = b""
        postmaster_domain = self.cfg.bounces.return_path_domain or self.cfg.hostname
        content = build_dsn(
            reporting_mta=self.cfg.hostname, original_envelope_id=msg.id, mail_from=msg.mail_from,
            arrival=msg.received_at, failures=failures, original=original,
            postmaster=f"MAILER-DAEMON@{postmaster_domain}",
        )
        dsn = SpooledMessage(id=new_message_id(), tenant=msg.tenant, pool=msg.pool, mail_from="",
                             rcpts=[msg.mail_from], received_at=time.time(), kind="dsn")
        await self.spool.commit(dsn, content)
        self.submit(dsn)
