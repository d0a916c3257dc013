"""Knot DNS serving test blocklist zones, and a UDP socket that never answers.

Zones (all with the RFC 5782 §5 test points where they are meant to pass it):

- ``bl.test``: a good list; lists the addresses given to it (return code per address).
- ``clean.test``: a good list that lists none of the pool.
- ``errors.test``: answers 127.255.255.254 for everything (Spamhaus' "public resolver" error).
- ``all.test``: lists everything, 127.0.0.1 included: fails its self-test.
- ``key-secret.keyed.test``: a keyed list (Spamhaus DQS style): only names under the key exist.
- ``deleg.test``: delegated to an address where nothing answers (the resolver sees a referral).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from smtpinfra_operator.reputation.dnsbl import query_name
from tests.dns.knot import KnotServer

GOOD, CLEAN, ERRORS, EVERYTHING, KEYED, DELEGATED = (
    "bl.test", "clean.test", "errors.test", "all.test", "keyed.test", "deleg.test")
QUERY_KEY = "key-secret"
ZONES = (GOOD, CLEAN, ERRORS, EVERYTHING, KEYED, DELEGATED)
SOA = "@ SOA ns.{zone}. hostmaster.{zone}. 1 60 60 600 5"


def _owner(address: str, zone: str) -> str:
    """The owner name (relative to `zone`) that a lookup of `address` asks for."""
    return query_name(address, zone).removesuffix(f".{zone}.")


def test_points(zone: str, prefix: str = "") -> list[str]:
    """RFC 5782 §5: 127.0.0.2 and ::FFFF:7F00:2 listed (127.0.0.1 and ::FFFF:7F00:1 are not)."""
    return [f"{_owner(p, zone)}{prefix} A 127.0.0.2" for p in ("127.0.0.2", "::ffff:7f00:2")] + [
        f'{_owner("127.0.0.2", zone)}{prefix} TXT "RFC 5782 test point"']


def listing_records(listed: Mapping[str, str], zone: str, prefix: str = "") -> list[str]:
    return [f"{_owner(a, zone)}{prefix} A {code}" for a, code in listed.items()]


@dataclass
class DnsblKnot(KnotServer):
    """knot.py's server plus the blocklist zones; `listed` are the addresses bl.test lists at start."""

    listed: Mapping[str, str] = field(default_factory=dict)
    bulk: Iterable[str] = ()
    """More addresses for bl.test to list (the bench's pool), all with 127.0.0.2."""

    def write_config(self) -> None:
        super().write_config()
        conf = self.directory / "knot.conf"
        conf.write_text(conf.read_text() + "".join(f"  - domain: {z}\n" for z in ZONES))
        bulk = dict.fromkeys(self.bulk, "127.0.0.2")
        self._zone(GOOD, [*test_points(GOOD), *listing_records({**bulk, **self.listed}, GOOD)])
        self._zone(CLEAN, test_points(CLEAN))
        self._zone(ERRORS, ["* A 127.255.255.254"])
        self._zone(EVERYTHING, ["* A 127.0.0.2"])
        key = f".{QUERY_KEY}"
        self._zone(KEYED, [*test_points(KEYED, key), *listing_records(self.listed, KEYED, key)])
        self._zone(DELEGATED, ["sub NS ns.sub", "ns.sub A 127.0.20.254"])

    def _zone(self, zone: str, records: list[str]) -> None:
        head = ["$TTL 1", SOA.format(zone=zone), f"@ NS ns.{zone}.", f"ns A {self.address}"]
        (self.directory / f"{zone}.zone").write_text("\n".join([*head, *records]) + "\n")

    def list_address(self, address: str, code: str = "127.0.0.2", zone: str = GOOD, key: str | None = None) -> None:
        self.foreign_update(zone, add=[(query_name(address, zone, key).rstrip("."), 1, "A", code)])

    def delist_address(self, address: str, zone: str = GOOD, key: str | None = None) -> None:
        self.foreign_update(zone, delete=[(query_name(address, zone, key).rstrip("."), "A")])


class SilentUdp:
    """A bound UDP socket that reads nothing and answers nothing: queries to it time out."""

    def __init__(self, host: str = "127.0.20.253") -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.address = f"{host}:{self.sock.getsockname()[1]}"

    def close(self) -> None:
        self.sock.close()


def make_knot(directory: Path, listed: Mapping[str, str], bulk: Iterable[str] = ()) -> DnsblKnot:
    server = DnsblKnot(directory, listed=listed, bulk=list(bulk))
    server.start()
    return server
