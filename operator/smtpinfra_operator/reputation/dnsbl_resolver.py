"""Blocklist lookups over UDP: one socket per check, the usual answers read without dnspython.

What the monitor (`dnsbl_monitor`) asks through: `Resolver` is the seam tests replace; `DnsResolver`
asks one resolver (the pool's, or the system's) straight, with no cache and no search list.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Protocol

import dns.asyncquery
import dns.entropy
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


class _Datagrams:
    """One UDP socket for every query of a check: an answer goes to the query waiting for its id and question.

    `dns.asyncquery.udp` opens a socket per query and dnspython builds and parses every message in
    full; for 5,000 queries a check that cost 5-10x the DNS itself (bench/dnsbl_monitor.py). Here a
    query is its 12-byte header plus the question, the usual NXDOMAIN answer is read from its header
    (id, QR, RCODE) and echoed question, the usual listing answer by `read_a_answer`, and dnspython
    parses the rest. The socket is read until empty on each wake-up (asyncio's datagram transport
    reads one datagram per turn of the loop, one epoll call per answer).
    """

    def __init__(self, host: str, port: int) -> None:
        self.waiting: dict[int, tuple[bytes, asyncio.Future[Lookup], float]] = {}
        """Query id → (question, the asker's future, the loop time it times out at)."""
        self._sweeper: asyncio.TimerHandle | None = None
        self._sweep_every = 0.1
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

    def send(self, data: bytes) -> None:
        self.sock.send(data)

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
        if self._sweeper is None and not self.closed:
            self._sweeper = self._loop.call_later(seconds, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self._loop.time()
        for _, future, deadline in list(self.waiting.values()):
            if deadline <= now and not future.done():
                future.set_exception(TimeoutError())
        if self.waiting and not self.closed:
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
        waiting = self.waiting.get(int.from_bytes(data[:2], "big"))
        if waiting is None or waiting[1].done() or not data[2] & 0x80:
            return  # late (timed out), foreign or not a response: ignored, as dnspython's receive_udp does
        question, future, _ = waiting
        if data[4:6] != b"\x00\x01" or data[12:12 + len(question)].lower() != question.lower():
            return
        if data[2] & 0x02:  # TC
            future.set_result(_TRUNCATED)
        elif data[3] & 0x0F == dns.rcode.NXDOMAIN:
            future.set_result(Lookup(AnswerKind.NXDOMAIN))
        elif (fast := read_a_answer(data, 12 + len(question))) is not None:
            future.set_result(fast)
        else:
            try:
                future.set_result(_lookup(dns.message.from_wire(data)))
            except dns.exception.DNSException as error:  # malformed: no answer
                future.set_result(Lookup(AnswerKind.FAILURE, detail=f"malformed answer: {error}"))

    def error_received(self, exc: Exception) -> None:
        for _, future, _ in self.waiting.values():  # e.g. ICMP port unreachable: every query fails now
            if not future.done():
                future.set_exception(exc)


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
        qid = dns.entropy.random_16()
        while qid in endpoint.waiting:
            qid = dns.entropy.random_16()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lookup] = loop.create_future()
        endpoint.waiting[qid] = (question, future, loop.time() + self.timeout)
        endpoint.sweep_every(self.timeout / 5)
        try:
            endpoint.send(struct.pack("!HHHHHH", qid, _QUERY_FLAGS, 1, 0, 0, 0) + question)
            return await future
        finally:
            endpoint.waiting.pop(qid, None)

    async def lookup(self, name: str) -> Lookup:
        question = question_wire(name)
        detail = ""
        for _ in range(self.retries + 1):
            try:
                found = await self._udp(question)
                if found is _TRUNCATED:
                    query = dns.message.make_query(name, dns.rdatatype.A)
                    found = _lookup(await dns.asyncquery.tcp(query, self.host, timeout=self.timeout, port=self.port))
            except (TimeoutError, dns.exception.Timeout):
                detail = f"timeout after {self.timeout:g}s"
                continue
            except (OSError, dns.exception.DNSException) as error:
                detail = f"{type(error).__name__}: {error}"
                continue
            return found
        return Lookup(AnswerKind.FAILURE, detail=detail)

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
