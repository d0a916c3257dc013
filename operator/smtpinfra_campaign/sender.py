"""The sending loop: the list streamed through the ledger, paced, submitted by a few connections.

Order per recipient: claim in the ledger (batch) -> render -> `submitting` -> SMTP -> `submitted` /
`suppressed` / `failed`; the state changes are committed in batches behind the sending (`marks`).
A 4xx or a lost connection retries the same message (same Message-ID and idempotency key) after a
back-off; nothing is dropped. Around the
loop: the Lease (renewed with the progress; losing it stops everything at once) and a watch on
the Campaign (`spec.suspend` pauses, deletion stops).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from smtpinfra_api.v1alpha1.campaign import CampaignSpec
from smtpinfra_mta.campaign_contract import normalise_address

from .kube import CampaignApi
from .lease import LeaseHolder, LeaseLost, lease_name
from .ledger import FINAL, Claim, Ledger, State
from .marks import LedgerMarks
from .message import (
    CampaignIdentity,
    Compliance,
    SenderRefused,
    check_sender_domain,
    identifiers,
)
from .pacing import TokenBucket
from .progress import MAX_INVALID_ROWS, progress_json
from .recipients import InvalidRow, ListError, Recipient, Row
from .sources import RECIPIENTS_DIR, open_rows
from .submission import Outcome, SmtpSettings, Submitter
from .templates import CampaignTemplates, TemplateProblem, validate_templates
from .wire import MessageWriter

log = logging.getLogger(__name__)

EXIT_DONE, EXIT_CRASH, EXIT_BAD_INPUT = 0, 1, 2
FIRST_ROWS = 20
"""Rows the templates are rendered against before anything is sent."""
BATCH = 200


class BadInput(Exception):
    """Input that stops the campaign (exit 2): a template error, a forbidden From, an unreadable list."""


@dataclass
class SenderSettings:
    namespace: str
    name: str
    smtp: SmtpSettings
    unsubscribe_key: bytes
    unsubscribe_url: str | None
    lease: str | None = None
    identity: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    connections: int = 16
    poll_interval: float = 3.0
    renew_interval: float = 5.0
    lease_duration: int = 15
    retry_initial: float = 1.0
    retry_max: float = 60.0
    recipients_dir: Path = RECIPIENTS_DIR


@dataclass
class _Work:
    recipient: Recipient
    message_id: str
    idempotency_key: str


@dataclass
class _Run:
    """State shared by the tasks of one run."""

    total: int = 0
    listed: bool = False
    error: str | None = None
    stop: str | None = None
    paused_by_mta: bool = False
    running: asyncio.Event = field(default_factory=asyncio.Event)


class CampaignSender:
    def __init__(self, settings: SenderSettings, api: CampaignApi, ledger: Ledger) -> None:
        self.s = settings
        self.api = api
        self.ledger = ledger
        self.run_state = _Run()

    # ------------------------------------------------------------------ set-up (bad input -> exit 2)

    def _prepare(self, obj: dict[str, Any]) -> tuple[CampaignSpec, CampaignIdentity, Compliance, CampaignTemplates]:
        try:
            spec = CampaignSpec.model_validate(obj.get("spec") or {})
        except ValidationError as exc:
            raise BadInput(f"invalid Campaign spec: {exc}") from None
        campaign = CampaignIdentity(self.s.name, self.s.namespace, str(obj["metadata"]["uid"]), spec.tenant)
        tenant = self.api.get_tenant(spec.tenant)
        if tenant is None:
            raise BadInput(f"Tenant {spec.tenant!r} not found")
        try:
            check_sender_domain(spec.sender.address, list((tenant.get("spec") or {}).get("senderDomains") or []))
        except SenderRefused as exc:
            raise BadInput(str(exc)) from None
        base_url = self.s.unsubscribe_url or spec.unsubscribe.url
        if not base_url or not spec.unsubscribe.mailto:
            raise BadInput("no unsubscribe URL (SMTP_INFRA_UNSUBSCRIBE_URL or spec.unsubscribe.url) or mailto")
        compliance = Compliance(
            from_address=spec.sender.address, from_name=spec.sender.name, reply_to=spec.reply_to,
            postal_address=spec.postal_address, unsubscribe_base_url=base_url,
            unsubscribe_mailto=spec.unsubscribe.mailto, unsubscribe_key=self.s.unsubscribe_key,
        )
        try:
            templates = CampaignTemplates.from_spec(spec)
            first = [r.variables for r in islice(self._valid(self._rows(spec, templates)), FIRST_ROWS)]
        except (TemplateProblem, ListError, KeyError, OSError, ValueError) as exc:
            raise BadInput(str(exc).strip("'\"")) from None
        problem = validate_templates(spec, first)
        if problem is not None:
            raise BadInput(problem)
        return spec, campaign, compliance, templates

    def _rows(self, spec: CampaignSpec, templates: CampaignTemplates) -> Iterator[Row]:
        return open_rows(spec, self.s.namespace, self.api, templates.subject_variables, self.s.recipients_dir)

    @staticmethod
    def _valid(rows: Iterator[Row]) -> Iterator[Recipient]:
        return (r for r in rows if isinstance(r, Recipient))

    # ------------------------------------------------------------------ the run

    def progress(self, done: bool = False) -> str:
        counts = self.ledger.counts(self.uid)
        invalid = self.ledger.invalid_rows(self.uid, MAX_INVALID_ROWS) if counts[State.INVALID] else []
        total = self.run_state.total if self.run_state.listed else max(self.run_state.total, sum(counts.values()))
        return progress_json(counts, total=total, done=done, error=self.run_state.error, invalid_rows=invalid)

    async def run(self) -> int:
        obj = await asyncio.to_thread(self.api.get_campaign, self.s.namespace, self.s.name)
        if obj is None:
            log.error("Campaign %s/%s not found", self.s.namespace, self.s.name)
            return EXIT_BAD_INPUT
        self.uid = str(obj["metadata"]["uid"])
        self.marks = LedgerMarks(self.ledger, self.uid)
        self.holder = LeaseHolder(self.api, self.s.namespace, self.s.lease or lease_name(self.s.name),
                                  self.s.identity, duration=self.s.lease_duration)
        try:
            spec, campaign, compliance, templates = await asyncio.to_thread(self._prepare, obj)
        except BadInput as exc:
            log.error("campaign %s/%s stopped: %s", self.s.namespace, self.s.name, exc)
            self.run_state.error = str(exc)[:1024]
            await self.holder.acquire(on_wait=self._waiting)
            await self.holder.release(self.progress(done=False))
            return EXIT_BAD_INPUT
        self.mail_from = spec.sender.address
        await self.holder.acquire(on_wait=self._waiting)
        log.info("holding lease %s/%s as %s", self.s.namespace, self.holder.name, self.s.identity)
        if not obj["spec"].get("suspend"):
            self.run_state.running.set()
        queue: asyncio.Queue[_Work | None] = asyncio.Queue(maxsize=self.s.connections * 4)
        bucket = TokenBucket(spec.rate.messages_per_minute)
        writer = MessageWriter(campaign, compliance)
        workers = [asyncio.create_task(self._worker(queue, bucket, writer, templates))
                   for _ in range(self.s.connections)]
        producer = asyncio.create_task(self._produce(spec, campaign, templates, queue))
        guards = [asyncio.create_task(self._renew()), asyncio.create_task(self._watch())]
        finished: asyncio.Future[Any] = asyncio.gather(producer, *workers)
        try:
            done, _ = await asyncio.wait([finished, *guards], return_when=asyncio.FIRST_COMPLETED)
            if finished in done:
                finished.result()
        finally:
            for task in [producer, *workers, *guards]:
                task.cancel()
            await asyncio.gather(finished, *guards, return_exceptions=True)
            await self.marks.close()  # every change committed before the counts are reported
        for guard in guards:
            if guard.done() and not guard.cancelled() and isinstance(guard.exception(), LeaseLost):
                log.error("stopped: %s", guard.exception())
                return EXIT_CRASH
        if self.run_state.stop is not None:
            log.warning("stopped: %s", self.run_state.stop)
            self.run_state.error = self.run_state.stop
            await self.holder.release(self.progress(done=False))
            return EXIT_DONE
        await self.holder.release(self.progress(done=True))
        log.info("campaign %s/%s done: %s", self.s.namespace, self.s.name, self.progress(done=True))
        return EXIT_DONE

    def _waiting(self, holder: str) -> None:
        log.info("lease %s/%s is held by %s; waiting", self.s.namespace, self.holder.name, holder)

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self.s.renew_interval)
            await self.holder.renew(await asyncio.to_thread(self.progress))

    async def _watch(self) -> None:
        """Re-read the Campaign: suspend pauses, resume continues, deletion (or a new uid) stops."""
        while True:
            await asyncio.sleep(self.s.poll_interval)
            try:
                obj = await asyncio.to_thread(self.api.get_campaign, self.s.namespace, self.s.name)
            except Exception as exc:  # the API server away for a moment: keep going, the Lease decides
                log.warning("could not read the Campaign: %s", exc)
                continue
            if obj is None or str(obj["metadata"]["uid"]) != self.uid:
                self.run_state.stop = "campaign deleted"
                return
            if (obj.get("spec") or {}).get("suspend"):
                if self.run_state.running.is_set():
                    log.info("campaign suspended: pausing")
                self.run_state.running.clear()
            elif not self.run_state.running.is_set():
                log.info("campaign resumed")
                self.run_state.running.set()

    async def _produce(self, spec: CampaignSpec, campaign: CampaignIdentity, templates: CampaignTemplates,
                       queue: asyncio.Queue[_Work | None]) -> None:
        rows = self._rows(spec, templates)
        while True:
            batch = await asyncio.to_thread(lambda: list(islice(rows, BATCH)))
            if not batch:
                break
            self.run_state.total += len(batch)
            for work in await asyncio.to_thread(self._claim, campaign, batch):
                await queue.put(work)
        self.run_state.listed = True
        for _ in range(self.s.connections):
            await queue.put(None)

    def _claim(self, campaign: CampaignIdentity, batch: list[Row]) -> list[_Work]:
        """Record the batch in the ledger; the recipients still to send (pending, or left submitting)."""
        invalid = [Claim(f"#{r.row}", r.row, "", "", r.reason) for r in batch if isinstance(r, InvalidRow)]
        valid = [r for r in batch if isinstance(r, Recipient)]
        claims = []
        for r in valid:
            ids = identifiers(campaign, r.email, self.mail_from)
            claims.append(Claim(normalise_address(r.email), r.row, ids.message_id, ids.idempotency_key))
        out = []
        entries = self.ledger.claim(self.uid, claims) if claims else []
        for r, entry in zip(valid, entries, strict=True):
            if entry.row != r.row:
                invalid.append(Claim(f"#{r.row}", r.row, "", "", f"duplicate of the address in row {entry.row}"))
            elif entry.state not in FINAL:
                out.append(_Work(r, entry.message_id, entry.idempotency_key))
        if invalid:
            self.ledger.claim(self.uid, invalid, State.INVALID)
        return out

    async def _worker(self, queue: asyncio.Queue[_Work | None], bucket: TokenBucket, writer: MessageWriter,
                      templates: CampaignTemplates) -> None:
        submitter = Submitter(self.s.smtp)
        key = None
        try:
            while (work := await queue.get()) is not None:
                key = normalise_address(work.recipient.email)
                try:
                    rendered = templates.render(work.recipient.variables)
                except TemplateProblem as exc:
                    self.marks.add(key, State.INVALID, f"row {work.recipient.row}: {exc}"[:512])
                    continue
                data = writer.write(work.recipient.email, rendered.subject, rendered.text, rendered.html)
                await self._submit(submitter, bucket, key, work, data)
        finally:
            await submitter.close()

    async def _submit(self, submitter: Submitter, bucket: TokenBucket, key: str, work: _Work, data: bytes) -> None:
        delay = self.s.retry_initial
        while True:
            await self.run_state.running.wait()
            await bucket.take()
            self.marks.add(key, State.SUBMITTING)
            result = await submitter.submit(self.mail_from, work.recipient.email, data)
            if result.outcome is Outcome.ACCEPTED:
                self.marks.add(key, State.SUBMITTED, result.reply)
                if self.run_state.paused_by_mta:
                    self.run_state.paused_by_mta, self.run_state.error = False, None
                return
            if result.outcome in (Outcome.SUPPRESSED, Outcome.FAILED):
                state = State.SUPPRESSED if result.outcome is Outcome.SUPPRESSED else State.FAILED
                self.marks.add(key, state, result.reply)
                return
            if result.outcome is Outcome.PAUSE:
                self.run_state.paused_by_mta = True
                self.run_state.error = f"the MTA refuses the campaign: {result.reply}"
            log.warning("%s for row %d: %s; retrying in %.0fs", result.outcome, work.recipient.row,
                        result.reply, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.s.retry_max)
