"""A real Knot DNS server for tests: TSIG-signed updates and AXFR, on a loopback address.

Address plan (all local on Linux): 127.0.10.53 runs knotd; 127.0.10.1-127.0.10.199 are
sending/service addresses of the test servers, 127.0.10.200+ foreign hosts. Zones:
``example.test`` (forward) and ``10.0.127.in-addr.arpa`` (reverse for 127.0.10.x).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rcode
import dns.tsig
import dns.update

from tests import ports

KNOT_ADDR = "127.0.10.53"
FORWARD_ZONE = "example.test"
REVERSE_ZONE = "10.0.127.in-addr.arpa"
KEY_NAME = "smtp-infra-test."
KEY_SECRET = base64.b64encode(b"smtp-infra test tsig key, 32 b!!").decode()

# Records another team put there before us: we must never touch them.
FOREIGN_ZONE_RECORDS = [
    "www A 127.0.10.200",
    '_dmarc.conflict TXT "v=DMARC1; p=reject; rua=mailto:secops@conflict.example.test"',
    "200.x CNAME www",  # unrelated foreign CNAME
]


def free_port(host: str) -> int:
    """A port free for both TCP and UDP on `host`."""
    return ports.free_port(host, udp=True)


@dataclass
class KnotServer:
    """One knotd process with its config and zones in `directory`; restartable on the same port."""

    directory: Path
    address: str = KNOT_ADDR
    port: int = 0
    extra_zones: tuple[str, ...] = ()
    """More (empty) zones to serve, e.g. a mailbox provider's domain whose MX host names a test resolves."""
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def nameserver(self) -> str:
        """"address:port", the form verify() takes."""
        return f"{self.address}:{self.port}"

    def write_config(self) -> None:
        d = self.directory
        (d / "db").mkdir(exist_ok=True)
        (d / "knot.conf").write_text(
            "server:\n"
            f"    listen: {self.address}@{self.port}\n"
            f"    rundir: {d}\n"
            "database:\n"
            f"    storage: {d}/db\n"
            "log:\n  - target: stderr\n    any: warning\n"
            "key:\n"
            f"  - id: {KEY_NAME}\n    algorithm: hmac-sha256\n    secret: {KEY_SECRET}\n"
            "acl:\n"
            f"  - id: tsig\n    key: {KEY_NAME}\n    action: [update, transfer]\n"
            "template:\n"
            f"  - id: default\n    storage: {d}\n    file: \"%s.zone\"\n    acl: tsig\n"
            "zone:\n"
            f"  - domain: {FORWARD_ZONE}\n"
            f"  - domain: {REVERSE_ZONE}\n"
            + "".join(f"  - domain: {zone}\n" for zone in self.extra_zones)
        )
        soa = "@ SOA ns.example.test. hostmaster.example.test. 1 60 60 600 5"
        for zone in self.extra_zones:
            (d / f"{zone}.zone").write_text(f"$TTL 60\n{soa}\n@ NS ns.example.test.\n")
        (d / f"{FORWARD_ZONE}.zone").write_text("\n".join(
            ["$TTL 60", soa, "@ NS ns.example.test.", f"ns A {self.address}", *FOREIGN_ZONE_RECORDS]) + "\n")
        (d / f"{REVERSE_ZONE}.zone").write_text("\n".join(
            ["$TTL 60", soa, "@ NS ns.example.test.", "200 PTR www.example.test."]) + "\n")

    def start(self) -> None:
        if shutil.which("knotd") is None:
            raise RuntimeError("knotd is not installed: run scripts/install-system-deps.sh")
        if not self.port:
            self.port = free_port(self.address)
            self.write_config()
        self.proc = subprocess.Popen(["knotd", "-c", str(self.directory / "knot.conf")],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not self._answers():
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"knotd exited with {self.proc.returncode}: {out}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("knotd did not answer within 15 s")
            time.sleep(0.05)

    def _answers(self) -> bool:
        q = dns.message.make_query(f"{REVERSE_ZONE}.", "SOA")
        try:
            r = dns.query.udp(q, self.address, port=self.port, timeout=0.3)
        except (OSError, dns.exception.Timeout):
            return False
        return r.rcode() == dns.rcode.NOERROR and bool(r.answer)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    # -------------------------------------------------------------- acting as somebody else

    def foreign_update(self, zone: str, *, add: Sequence[tuple[str, int, str, str]] = (),
                       delete: Sequence[tuple[str, str]] = ()) -> None:
        """Change records as another tool would (no ownership TXT): add (name, ttl, type, value)."""
        u = dns.update.UpdateMessage(zone + ".", keyring=dns.tsig.Key(KEY_NAME, KEY_SECRET, "hmac-sha256"))
        for name, rtype in delete:
            u.delete(name + ".", rtype)
        for name, ttl, rtype, value in add:
            u.add(name + ".", ttl, rtype, value)
        r = dns.query.tcp(u, self.address, port=self.port, timeout=5)
        assert r.rcode() == dns.rcode.NOERROR, dns.rcode.to_text(r.rcode())
