"""Blocklist lookups over UDP: one socket per check, the usual answers read without dnspython.

What the monitor (`dnsbl_monitor`) asks through: `Resolver` is the seam tests replace; `DnsResolver`
asks one resolver (the pool's, or the system's) straight, with no cache and no search list.
"""

from __future__ import annotations

import asyncio
import functools
import os
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Protocol

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from ..dns.verify import parse_nameserver
from .dnsbl import AnswerKind, Lookup


class Resolver(Protocol):
    async def lookup(self, name: str) -> Lookup: ...

    async def lookup_many(self, names: Sequence[str], concurrency: int) -> list[Lookup]: ...

    def close(self) -> None: ...


def question_wire(name: str) -> bytes:
    """The question section of an A/IN query for `name` (RFC 1035 §4.1.2), uncompressed."""
    wire = bytearray()
    for label in name.rstrip(".").encode("ascii").split(b"."):
        wire.append(len(label))
        wire += label
    return bytes(wire + b"\x00\x00\x01\x00\x01")


_QUERY_FLAGS = 0x0100  # RD: a resolver the pool names recurses; an authoritative server ignores it
_TRUNCATED = Lookup(AnswerKind.FAILURE, detail="truncated")
_NXDOMAIN = Lookup(AnswerKind.NXDOMAIN)


Deliver = Callable[[Lookup | BaseException], None]
"""Where a query's outcome goes: its Lookup, or the error (a timeout, an ICMP error) that ended it."""


class _Datagrams:
    """One UDP socket for every query of a check: an answer goes to the query waiting for its id and question.

    `dns.asyncquery.udp` opens a socket per query and dnspython builds and parses every message in
    full; for 5,000 queries a check that cost 5-10x the DNS itself (bench/dnsbl_monitor.py). Here a
    query is its 12-byte header plus the question, the usual NXDOMAIN answer is read from its header
    (id, QR, RCODE) and echoed question, the usual listing answer by `read_a_answer`, and dnspython
    parses the rest. The socket is read until empty on each wake-up (asyncio's datagram transport
    reads one datagram per turn of the loop, one epoll call per answer). An outcome is handed to a
    callback, not a future: a batch (`DnsResolver.lookup_many`) sends its next query from there,
    with no task switch per query. Query ids come from a buffer of `os.urandom` bytes (unpredictable,
    as an id must be, at a fraction of the cost of a call per id).
    """

    def __init__(self, host: str, port: int) -> None:
        self.waiting: dict[int, tuple[bytes, Deliver, float]] = {}
        """Query id → (question, where its outcome goes, the loop time it times out at)."""
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = 0.1
        self._ids = b""
        self._next_id = 0
        self._loop = asyncio.get_running_loop()
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            self.sock.setblocking(False)
            # Room for every answer in flight while the loop is busy (the kernel caps it at rmem_max).
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            self.sock.connect((host, port))  # connected: the kernel drops datagrams from anyone else
        except OSError:
            self.sock.close()
            raise
        self._loop.add_reader(self.sock.fileno(), self._readable)
        self.closed = False

    def ask(self, question: bytes, deliver: Deliver, timeout: float) -> None:
        """Send one query; its outcome goes to `deliver` exactly once (a send error too, at once)."""
        while True:
            if self._next_id >= len(self._ids):
                self._ids, self._next_id = os.urandom(4096), 0
            qid = int.from_bytes(self._ids[self._next_id:self._next_id + 2], "big")
            self._next_id += 2
            if qid not in self.waiting:
                break
        self.waiting[qid] = (question, deliver, self._loop.time() + timeout)
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._sweep_every, self._sweep)
        try:
            self.sock.send(struct.pack("!HHHHHH", qid, _QUERY_FLAGS, 1, 0, 0, 0) + question)
        except OSError as error:
            del self.waiting[qid]
            deliver(error)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if not self.closed:
            self.closed = True
            self._loop.remove_reader(self.sock.fileno())
            self.sock.close()

    def sweep_every(self, seconds: float) -> None:
        """Time out overdue queries every `seconds` (a fifth of the timeout) while any wait: one timer for the
        socket instead of one per query (asyncio.wait_for, then a timer each, were a tenth of a check's CPU)."""
        self._sweep_every = seconds

    def _sweep(self) -> None:
        self._sweeper = None
        now = self._loop.time()
        for qid in [q for q, (_, _, deadline) in self.waiting.items() if deadline <= now]:
            _, deliver, _ = self.waiting.pop(qid)
            deliver(TimeoutError())
        if self.waiting and not self.closed and self._sweeper is None:  # a retry above may have started one
            self._sweeper = self._loop.call_later(self._sweep_every, self._sweep)

    def _readable(self) -> None:
        for _ in range(1024):  # bounded, so a flood cannot hold the loop
            try:
                data = self.sock.recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ICMP port unreachable: every query fails now
                self.error_received(exc)
                return
            self.datagram_received(data)

    def datagram_received(self, data: bytes) -> None:
        if len(data) < 12:
            return
        qid = int.from_bytes(data[:2], "big")
        waiting = self.waiting.get(qid)
        if waiting is None or not data[2] & 0x80:
            return  # late (timed out), foreign or not a response: ignored, as dnspython's receive_udp does
        question, deliver, _ = waiting
        if data[4:6] != b"\x00\x01" or data[12:12 + len(question)].lower() != question.lower():
            return
        del self.waiting[qid]
        if data[2] & 0x02:  # TC
            deliver(_TRUNCATED)
        elif data[3] & 0x0F == dns.rcode.NXDOMAIN:
            deliver(_NXDOMAIN)
        elif (fast := read_a_answer(data, 12 + len(question))) is not None:
            deliver(fast)
        else:
            try:
                deliver(_lookup(dns.message.from_wire(data)))
            except dns.exception.DNSException as error:  # malformed: no answer
                deliver(Lookup(AnswerKind.FAILURE, detail=f"malformed answer: {error}"))

    def error_received(self, exc: Exception) -> None:
        waiting, self.waiting = self.waiting, {}  # e.g. ICMP port unreachable: every query fails now
        for _, deliver, _ in waiting.values():
            deliver(exc)


class DnsResolver:
    """A-record lookups straight to one resolver over one UDP socket (TCP with dnspython when truncated).

    No cache and no search list: every check asks afresh. A referral (an authoritative server that
    does not recurse answering for another zone) is a failure, not "not listed".
    """

    def __init__(self, nameserver: str | None, timeout: float, retries: int = 1) -> None:
        if nameserver:
            self.host, self.port = parse_nameserver(nameserver)
        else:
            system = dns.resolver.Resolver()
            self.host, self.port = str(system.nameservers[0]), int(system.port)
        self.timeout = timeout
        self.retries = retries
        self._protocol: _Datagrams | None = None

    async def _endpoint(self) -> _Datagrams:
        if self._protocol is None or self._protocol.closed:
            self._protocol = _Datagrams(self.host, self.port)
        return self._protocol

    async def _udp(self, question: bytes) -> Lookup:
        endpoint = await self._endpoint()
        future: asyncio.Future[Lookup] = asyncio.get_running_loop().create_future()

        def deliver(outcome: Lookup | BaseException) -> None:
            if not future.done():
                if isinstance(outcome, BaseException):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

        endpoint.sweep_every(self.timeout / 5)
        endpoint.ask(question, deliver, self.timeout)
        return await future

    async def _tcp(self, name: str) -> Lookup:
        """A truncated answer asked again over TCP (dnspython)."""
        try:
            query = dns.message.make_query(name, dns.rdatatype.A)
            return _lookup(await dns.asyncquery.tcp(query, self.host, timeout=self.timeout, port=self.port))
        except (TimeoutError, dns.exception.Timeout):
            return Lookup(AnswerKind.FAILURE, detail=f"timeout after {self.timeout:g}s")
        except (OSError, dns.exception.DNSException) as error:
            return Lookup(AnswerKind.FAILURE, detail=f"{type(error).__name__}: {error}")

    async def lookup(self, name: str) -> Lookup:
        question = question_wire(name)
        detail = ""
        for _ in range(self.retries + 1):
            try:
                found = await self._udp(question)
            except TimeoutError:
                detail = f"timeout after {self.timeout:g}s"
                continue
            except OSError as error:
                detail = f"{type(error).__name__}: {error}"
                continue
            return await self._tcp(name) if found is _TRUNCATED else found
        return Lookup(AnswerKind.FAILURE, detail=detail)

    async def lookup_many(self, names: Sequence[str], concurrency: int) -> list[Lookup]:
        """Every name, at most `concurrency` queries in flight: each answer sends the next query from the
        socket's callback (no task or future per query), a timeout or send error retries `retries` times."""
        if not names:
            return []
        endpoint = await self._endpoint()
        endpoint.sweep_every(self.timeout / 5)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        found: list[Lookup] = [Lookup(AnswerKind.FAILURE, detail="not asked")] * len(names)
        tries = [0] * len(names)
        questions = [question_wire(n) for n in names]
        todo = iter(range(len(names)))
        left = len(names)

        def finish(i: int, lookup: Lookup) -> None:
            nonlocal left
            found[i] = lookup
            left -= 1
            if left == 0:
                if not done.done():
                    done.set_result(None)
                return
            start(next(todo, None))

        def deliver(i: int, outcome: Lookup | BaseException) -> None:
            if not isinstance(outcome, BaseException):
                finish(i, outcome)
                return
            tries[i] += 1
            detail = (f"timeout after {self.timeout:g}s" if isinstance(outcome, TimeoutError)
                      else f"{type(outcome).__name__}: {outcome}")
            if tries[i] <= self.retries and not endpoint.closed:
                endpoint.ask(questions[i], functools.partial(deliver, i), self.timeout)
            else:
                finish(i, Lookup(AnswerKind.FAILURE, detail=detail))

        def start(i: int | None) -> None:
            if i is not None:
                endpoint.ask(questions[i], functools.partial(deliver, i), self.timeout)

        for _ in range(min(concurrency, len(names))):
            start(next(todo, None))
        await done
        for i, lookup in enumerate(found):
            if lookup is _TRUNCATED:
                found[i] = await self._tcp(names[i])
        return found

    def close(self) -> None:
        if self._protocol is not None:
            self._protocol.close()
        self._protocol = None


_RR = struct.Struct("!HHIH")  # TYPE, CLASS, TTL, RDLENGTH after an owner name


def read_a_answer(data: bytes, offset: int) -> Lookup | None:
    """A NOERROR response whose answers all have compressed owner names, read without dnspython (pure).

    That is what a blocklist answers for a listed name (and the error and list-everything zones for
    every name): dnspython's full parse of them was a third of a check's CPU. `offset` is where the
    answer section starts (after the echoed question). None for anything else (another RCODE, an
    uncompressed owner name, a section that does not add up): dnspython reads those, the same way.
    """
    if data[3] & 0x0F != dns.rcode.NOERROR:
        return None
    addresses = []
    for _ in range(int.from_bytes(data[6:8], "big")):
        if offset + 12 > len(data) or data[offset] & 0xC0 != 0xC0:
            return None
        rtype, rclass, _ttl, length = _RR.unpack_from(data, offset + 2)
        offset += 12
        if offset + length > len(data):
            return None
        if rtype == dns.rdatatype.A and rclass == dns.rdataclass.IN:
            if length != 4:
                return None
            addresses.append(socket.inet_ntoa(data[offset:offset + 4]))
        offset += length
    if addresses:
        return Lookup(AnswerKind.ADDRESSES, tuple(dict.fromkeys(addresses)))  # an RRset holds each once
    if data[2] & 0x04 or data[3] & 0x80:  # AA or RA
        return Lookup(AnswerKind.NODATA)
    return Lookup(AnswerKind.FAILURE, detail="referral: the resolver does not recurse")


def _lookup(response: dns.message.Message) -> Lookup:
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        return Lookup(AnswerKind.NXDOMAIN)
    if rcode != dns.rcode.NOERROR:
        return Lookup(AnswerKind.FAILURE, detail=dns.rcode.to_text(rcode))
    addresses = tuple(rd.address for rrset in response.answer if rrset.rdtype == dns.rdatatype.A for rd in rrset)
    if addresses:
        return Lookup(AnswerKind.ADDRESSES, addresses)
    if response.flags & (dns.flags.AA | dns.flags.RA):
        return Lookup(AnswerKind.NODATA)
    return Lookup(AnswerKind.FAILURE, detail="referral: the resolver does not recurse")
