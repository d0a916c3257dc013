"""Reports received on port 25 (asynchronous DSNs, ARF complaints): parsed, matched, acted on, released.

Guarantee: nothing received on port 25 can stop delivery or stay queued forever. The content is parsed
in a worker process with a size bound and a time limit (``reportworker``), matching and suppression run
on the loop but are cheap and bounded, and any failure releases the message into the bounded, expiring
quarantine (``quarantine``) with a metric, instead of leaving it in the queue to fail again after every
restart. A suppression database that is down is retried for ``bounces.report_retry_limit``, then the
report is quarantined too, so the signal is kept for inspection but never blocks anything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client import Counter, Gauge

from smtpinfra_mta.config import Bounces
from smtpinfra_mta.feedback import Outcome, outcomes
from smtpinfra_mta.metrics import Metrics
from smtpinfra_mta.outcomes import OutcomeStore, campaign_of
from smtpinfra_mta.quarantine import ENTRY_MAX_BYTES, Quarantine
from smtpinfra_mta.reports import Report
from smtpinfra_mta.reportworker import ParseFailed, ReportWorkers
from smtpinfra_mta.spool import Spool, SpooledMessage
from smtpinfra_mta.suppression import SuppressionStore
from smtpinfra_mta.verp import Verp

log = logging.getLogger(__name__)

QUARANTINE_DIR = "quarantine"
_RETRY_FIRST, _RETRY_MAX = 2.0, 300.0
_PRUNE_EVERY = 600.0


class InboundReports:
    """Handles inbound reports for one MTA process (the one that delivers)."""

    def __init__(self, cfg: Bounces, spool_dir: Path, metrics: Metrics,
                 suppression: SuppressionStore | None, *, fsync: bool = True) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.suppression = suppression
        self.verp: Verp | None = None
        self.outcomes: OutcomeStore | None = None  # complaints and async bounces per tenant and campaign
        self.unsubscribe: Callable[[str], Awaitable[bool]] | None = None  # mailto: unsubscribes (by subject)
        self.on_outcome: Callable[[str, str], None] | None = None  # (recipient, event): per-address figures
        self.quarantine = Quarantine(spool_dir / QUARANTINE_DIR, max_bytes=cfg.quarantine_max_bytes,
                                     max_age=cfg.quarantine_max_age, fsync=fsync)
        self.workers = ReportWorkers(cfg.report_workers, cfg.report_parse_timeout, cfg.report_max_bytes)
        r = metrics.registry
        self.handled = Counter("smtpinfra_mta_inbound_reports", "Inbound reports handled, by outcome",
                               ["outcome"], registry=r)
        self.quarantined = Counter("smtpinfra_mta_inbound_quarantined",
                                   "Inbound reports released into the quarantine instead of being handled",
                                   ["reason"], registry=r)
        self.quarantine_messages = Gauge("smtpinfra_mta_inbound_quarantine_messages",
                                         "Reports kept in the spool's quarantine area", registry=r)
        self.quarantine_bytes = Gauge("smtpinfra_mta_inbound_quarantine_bytes",
                                      "Bytes kept in the spool's quarantine area", registry=r)
        self._tasks: set[asyncio.Task[None]] = set()
        self._pruner: asyncio.Task[None] | None = None
        # Reports waiting for a worker hold no content: a flood of 25 MB reports must not fill memory.
        self._slots = asyncio.Semaphore(2 * cfg.report_workers)

    async def start(self) -> None:
        await self.workers.start()
        await self._prune()
        self._pruner = asyncio.create_task(self._prune_loop(), name="quarantine-prune")

    async def stop(self) -> None:
        tasks = [*self._tasks, *([self._pruner] if self._pruner is not None else [])]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.workers.close()

    def reload(self, cfg: Bounces, verp: Verp | None) -> None:
        """New bounds, time limit and keys; the worker pool keeps its size until the process restarts."""
        self.cfg = cfg
        self.verp = verp
        self.quarantine.max_bytes = cfg.quarantine_max_bytes
        self.quarantine.max_age = cfg.quarantine_max_age
        self.workers.timeout = cfg.report_parse_timeout

    def submit(self, msg: SpooledMessage, spool: Spool) -> None:
        """Handle ``msg`` in its own task; the task never raises (see :meth:`handle`)."""
        task = asyncio.create_task(self.handle(msg, spool), name=f"inbound-{msg.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def handle(self, msg: SpooledMessage, spool: Spool) -> None:
        """Parse, match, suppress, release. Every failure ends in the quarantine, never in an exception."""
        content = b""
        try:
            async with self._slots:
                # only what is parsed or kept for inspection stays in memory
                content = (await spool.content(msg.id))[:max(self.cfg.report_max_bytes, ENTRY_MAX_BYTES)]
                try:
                    report = await self.workers.parse(content)
                except ParseFailed as exc:
                    await self._quarantine(msg, spool, content, exc.reason, exc.detail)
                    return
            results = outcomes(report, msg.rcpts, self.verp) if self.verp is not None else []
            if report.kind == "other" and report.subject and self.unsubscribe is not None \
                    and await self.unsubscribe(report.subject):
                self.handled.labels(outcome="unsubscribe").inc()
                await spool.record_done(msg, [(r, "processed") for r in msg.rcpts])
                return
            if not await self._suppress(msg, results):
                await self._quarantine(msg, spool, content, "suppression", "suppression inserts kept failing")
                return
            self._count(msg, report, results)
            self.handled.labels(outcome="matched" if results else "unmatched").inc()
            await spool.record_done(msg, [(r, "processed") for r in msg.rcpts])
        except asyncio.CancelledError:
            raise  # shutting down: the message stays queued and is handled after the restart
        except Exception as exc:
            log.exception("inbound report handling failed", extra={"id": msg.id})
            try:
                await self._quarantine(msg, spool, content, "error", f"{type(exc).__name__}: {exc}")
            except Exception as again:
                log.error("inbound report could not be quarantined; it stays queued",
                          extra={"id": msg.id, "error": str(again)})

    async def _suppress(self, msg: SpooledMessage, results: list[Outcome]) -> bool:
        """Insert the suppressions, retrying a failing database for a while; False when it never worked."""
        delay = _RETRY_FIRST
        for o in results:
            if not o.suppress or self.suppression is None:
                continue
            while True:
                try:
                    await self.suppression.add(o.tenant, o.address, f"{o.event.replace('_', ' ')}: {o.detail}")
                    break
                except Exception as exc:
                    age = time.time() - msg.received_at
                    log.error("suppression insert failed; retrying", extra={"id": msg.id, "error": str(exc),
                                                                            "age": round(age)})
                    if age + delay > self.cfg.report_retry_limit:
                        return False
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX)
        return True

    def _count(self, msg: SpooledMessage, report: Report, results: list[Outcome]) -> None:
        for o in results:
            if o.event == "complaint":
                self.metrics.complained.labels(tenant=o.tenant).inc()
            if self.on_outcome is not None:
                self.on_outcome(o.address, o.event)
        if report.kind == "complaint" and not results:
            self.metrics.complained.labels(tenant="unknown").inc()
        if self.outcomes is not None:
            for o in results:
                # the quoted original's tag, trusted only for the tenant the VERP token authenticates
                tag = next((f for f in report.feedback_ids if campaign_of(f, o.tenant)), None)
                self.outcomes.reported(o.tenant, o.event, tag)
        log.info("inbound report", extra={"id": msg.id, "kind": report.kind, "client": msg.client,
                                          "matched": [(o.tenant, o.event) for o in results]})

    async def _quarantine(self, msg: SpooledMessage, spool: Spool, content: bytes, reason: str,
                          detail: str) -> None:
        """Keep the report for inspection (bounded), then release it from the queue."""
        kept = await asyncio.to_thread(self.quarantine.put, msg, content, reason, detail)
        await self._prune()
        # counted before the release, so whoever sees the queue empty sees the counts too
        self.quarantined.labels(reason=reason).inc()
        self.handled.labels(outcome="quarantined").inc()
        await spool.record_done(msg, [(r, "quarantined") for r in msg.rcpts])
        log.warning("inbound report quarantined", extra={"id": msg.id, "client": msg.client, "reason": reason,
                                                         "detail": detail[:200], "kept": kept})

    async def _prune(self) -> None:
        usage = await asyncio.to_thread(self.quarantine.prune)
        self.quarantine_messages.set(usage.messages)
        self.quarantine_bytes.set(usage.bytes)

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(_PRUNE_EVERY)
            try:
                await self._prune()
            except OSError as exc:
                log.error("quarantine prune failed", extra={"error": str(exc)})

