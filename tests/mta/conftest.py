"""Fixtures for MTA tests: real peers (swaks, smtp-sink, Knot DNS) on loopback addresses.

Address plan (all local on Linux):
  127.0.0.10   MTA listeners            127.0.0.21/22  pool "alpha" source IPs
  127.0.0.31   pool "beta" source IP    127.0.0.42     smtp-sink (the remote MX)
  127.0.0.53   knotd (authoritative for "test.")
"""

from __future__ import annotations

import asyncio
import datetime
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from smtpinfra_mta.app import MtaApp
from smtpinfra_mta.config import MtaConfig, parse_config
from smtpinfra_mta.dkim_sign import generate_key_file
from smtpinfra_mta.passwords import hash_password
from tests.dns.knot import free_port as free_udp_tcp_port  # a port free for TCP and UDP (DNS)
from tests.ports import free_port as free_port  # re-exported: the suites import it from here

MTA_ADDR = "127.0.0.10"
SRC_A1, SRC_A2, SRC_B = "127.0.0.21", "127.0.0.22", "127.0.0.31"
SINK_ADDR = "127.0.0.42"
DSN_SINK_ADDR = "127.0.0.43"  # MX of the senders' own domain (alpha.test, beta.test): receives DSNs
DNS_ADDR = "127.0.0.53"
PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-2", "carol": "carol-secret-3"}






def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open")


def wait_for(cond: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s")


# ------------------------------------------------------------------------------------ TLS + keys


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mta.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("mta.test")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    (d / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "tls.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )
    return d / "tls.crt", d / "tls.key"


@dataclass
class DkimKeys:
    rsa_file: Path
    rsa_txt: str
    ed_file: Path
    ed_txt: str


@pytest.fixture(scope="session")
def dkim_keys(tmp_path_factory: pytest.TempPathFactory) -> DkimKeys:
    d = tmp_path_factory.mktemp("dkim")
    rsa_txt = generate_key_file(d / "rsa.pem", "rsa-sha256")
    ed_txt = generate_key_file(d / "ed.pem", "ed25519-sha256")
    return DkimKeys(d / "rsa.pem", rsa_txt, d / "ed.pem", ed_txt)


@pytest.fixture(scope="session")
def password_hashes() -> dict[str, str]:
    return {u: hash_password(p, cost=11) for u, p in PASSWORDS.items()}


# ------------------------------------------------------------------------------------ DNS (Knot)


def _txt_rdata(value: str) -> str:
    chunks = [value[i:i + 200] for i in range(0, len(value), 200)]
    return " ".join(f'"{c}"' for c in chunks)


@dataclass
class Dns:
    address: str
    port: int


@pytest.fixture(scope="session")
def dns_server(tmp_path_factory: pytest.TempPathFactory, dkim_keys: DkimKeys) -> Iterator[Dns]:
    if shutil.which("knotd") is None:
        pytest.fail("knotd is not installed: run scripts/install-system-deps.sh")
    d = tmp_path_factory.mktemp("knot")
    port = free_udp_tcp_port(DNS_ADDR)
    (d / "knot.conf").write_text(
        f"server:\n    listen: {DNS_ADDR}@{port}\n    rundir: {d}\n"
        f"database:\n    storage: {d}/db\n"
        "log:\n  - target: stderr\n    any: warning\n"
        f"zone:\n  - domain: test.\n    storage: {d}\n    file: test.zone\n"
    )
    zone = [
        "$TTL 5",
        "@ SOA ns.test. hostmaster.test. 1 60 60 600 5",
        "@ NS ns.test.",
        f"ns A {DNS_ADDR}",
        # plain destinations, all served by the smtp-sink at 127.0.0.42
        "example MX 10 mx1.example", f"mx1.example A {SINK_ADDR}",
        "other MX 10 mx.other", f"mx.other A {SINK_ADDR}",
        "rcpt MX 10 mx.rcpt", f"mx.rcpt A {SINK_ADDR}",
        # two domains whose MX roll up to one provider ("bigmail": *.mx.bigmail.test)
        "bigmail MX 5 in1.mx.bigmail", f"in1.mx.bigmail A {SINK_ADDR}",
        "bigmail2 MX 5 in2.mx.bigmail", f"in2.mx.bigmail A {SINK_ADDR}",
        # the tenants' own domains, where DSNs go
        "alpha MX 10 mx.alpha", f"mx.alpha A {DSN_SINK_ADDR}",
        "beta MX 10 mx.beta", f"mx.beta A {DSN_SINK_ADDR}",
        # no MX record: implicit MX on the A record
        f"implicit A {SINK_ADDR}",
        # RFC 7505 null MX
        "nullmx MX 0 .",
        # the senders' DKIM keys
        f"rsa._domainkey.alpha TXT {_txt_rdata(dkim_keys.rsa_txt)}",
        f"ed._domainkey.alpha TXT {_txt_rdata(dkim_keys.ed_txt)}",
    ]
    for name in ("soft", "hard", "dead", "auto", "slow", "warm", "tls"):
        zone += [f"{name} MX 10 mx.{name}", f"mx.{name} A {SINK_ADDR}"]
    (d / "test.zone").write_text("\n".join(zone) + "\n")
    proc = subprocess.Popen(["knotd", "-c", str(d / "knot.conf")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            r = subprocess.run(["kdig", f"@{DNS_ADDR}", "-p", str(port), "+short", "+timeout=1", "MX",
                                "example.test"], capture_output=True, text=True, check=False)
            if "mx1.example.test." in r.stdout:
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout and proc.poll() is not None else ""
                raise RuntimeError(f"knotd did not start: {out}")
            time.sleep(0.1)
        yield Dns(DNS_ADDR, port)
    finally:
        proc.terminate()
        proc.wait(5)


# ------------------------------------------------------------------------------------ smtp-sink


@dataclass
class SinkMessage:
    client_addr: str
    helo: str
    mail_from: str
    rcpts: list[str]
    content: bytes  # the message as received, CRLF line endings, smtp-sink's own headers removed


class Sink:
    """A running Postfix smtp-sink that dumps each transaction to a file."""

    def __init__(self, directory: Path, port: int, proc: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.port = port
        self.proc = proc

    def sessions(self) -> int:
        """SMTP sessions that ended with QUIT (smtp-sink's -c counters; 'sess' also counts port probes)."""
        text = (self.directory / "counters").read_bytes().decode("ascii", "replace")
        found = re.findall(r"quit=(\d+)", text)
        return int(found[-1]) if found else 0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)

    def messages(self) -> list[SinkMessage]:
        out = []
        for f in sorted(self.directory.glob("m.*")):
            raw = f.read_bytes()
            if not raw.endswith(b"\n\n") and not raw.endswith(b"\n"):
                continue
            out.append(parse_sink_dump(raw))
        return out

    def wait_messages(self, n: int, timeout: float = 15.0) -> list[SinkMessage]:
        # a dump file is complete when smtp-sink closes it; give it a moment after it appears
        wait_for(lambda: len(list(self.directory.glob("m.*"))) >= n, timeout)
        time.sleep(0.2)
        return self.messages()


def parse_sink_dump(raw: bytes) -> SinkMessage:
    lines = raw.split(b"\n")
    meta: dict[str, list[str]] = {}
    i = 0
    while i < len(lines):
        line = lines[i].decode("latin-1")
        if line.startswith("Received:"):
            i += 3  # smtp-sink's three-line Received header ends its own headers
            break
        k, _, v = line.partition(": ")
        meta.setdefault(k, []).append(v)
        i += 1
    body = b"\r\n".join(lines[i:])
    if body.endswith(b"\r\n\r\n"):
        body = body[:-2]
    rcpts = [re.sub(r"^(?:TO:)?<(.*?)>.*$", r"\1", r, flags=re.I) for r in meta.get("X-Rcpt-Args", [])]
    mail = re.sub(r"^(?:FROM:)?<(.*?)>.*$", r"\1", meta.get("X-Mail-Args", [""])[0], flags=re.I)
    return SinkMessage(meta.get("X-Client-Addr", [""])[0], meta.get("X-Helo-Args", [""])[0], mail, rcpts, body)


@pytest.fixture
def sink_factory(tmp_path: Path) -> Iterator[Callable[..., Sink]]:
    if shutil.which("smtp-sink") is None and not Path("/usr/sbin/smtp-sink").exists():
        pytest.fail("smtp-sink is not installed: run scripts/install-system-deps.sh")
    procs: list[subprocess.Popen[bytes]] = []

    def start(*flags: str, port: int | None = None, name: str = "sink", addr: str = SINK_ADDR) -> Sink:
        d = tmp_path / name
        d.mkdir(exist_ok=True)
        port = port or free_port(addr)
        cmd = ["/usr/sbin/smtp-sink", "-u", "root", "-c", "-d", f"{d}/m.", *flags, f"{addr}:{port}", "100"]
        proc = subprocess.Popen(cmd, stdout=(d / "counters").open("wb"), stderr=subprocess.DEVNULL)
        procs.append(proc)
        wait_port(addr, port)
        return Sink(d, port, proc)

    yield start
    for p in procs:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


def https_get(address: str, port: int, path: str, cafile: Path, server_name: str) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) of a GET over TLS, verifying the certificate for `server_name`."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection((address, port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname=server_name) as conn:
        conn.sendall(f"GET {path} HTTP/1.1\r\nHost: {server_name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v for k, v in (line.split(": ", 1) for line in lines[1:])}
    assert int(headers["content-length"]) == len(body)
    return int(lines[0].split()[1]), headers["content-type"], body


# ------------------------------------------------------------------------------------ the MTA


def base_config(tmp_path: Path, tls_files: tuple[Path, Path], password_hashes: dict[str, str], *,
                dns: Dns | None = None, sink_port: int = 25, dkim: DkimKeys | None = None) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "hostname": "mta.test",
        "listeners": {
            "submission": {"bind": [MTA_ADDR], "port": free_port(MTA_ADDR)},
            "implicit_tls": {"enabled": True, "bind": [MTA_ADDR], "port": free_port(MTA_ADDR)},
            "inbound": {"bind": [MTA_ADDR], "port": free_port(MTA_ADDR), "domains": ["bounces.mta.test"]},
        },
        "tls": {"cert_file": str(tls_files[0]), "key_file": str(tls_files[1])},
        "limits": {"max_message_size": 200_000, "max_recipients": 5, "command_timeout": "30s"},
        "tenants": [
            {"name": "alpha", "credentials": [{"username": "alice", "password_hash": password_hashes["alice"]}],
             "sender_domains": ["alpha.test"], "pool": "alpha"},
            {"name": "beta", "credentials": [{"username": "bob", "password_hash": password_hashes["bob"]}],
             "sender_domains": ["beta.test"], "pool": "beta"},
            {"name": "gamma", "credentials": [{"username": "carol", "password_hash": password_hashes["carol"]}],
             "sender_domains": ["gamma.test"], "pool": "beta", "suspended": True},
        ],
        "pools": [
            {"name": "alpha", "source_ips": [{"address": SRC_A1, "ehlo_name": "out1.alpha-pool.test"}]},
            {"name": "beta", "source_ips": [{"address": SRC_B, "ehlo_name": "out1.beta-pool.test"}]},
        ],
        "delivery": {"port": sink_port, "retry_schedule": ["1s"], "max_queue_age": "1h",
                     "connect_timeout": "5s", "command_timeout": "10s"},
        "spool": {"directory": str(tmp_path / "spool"), "group_commit_window": 0.001},
        "suppression": {"url": f"sqlite:///{tmp_path / 'suppression.db'}"},
        "http": {"bind": MTA_ADDR, "port": free_port(MTA_ADDR)},
        "bounces": {"return_path_domain": "bounces.mta.test"},
    }
    if dns is not None:
        cfg["delivery"]["resolver"] = {"address": dns.address, "port": dns.port, "timeout": "3s"}
    else:
        # No resolver in the test: point at a closed port so nothing leaves loopback.
        cfg["delivery"]["resolver"] = {"address": "127.0.0.54", "port": free_port("127.0.0.54"), "timeout": "1s"}
    if dkim is not None:
        cfg["dkim"] = [
            {"domain": "alpha.test", "selector": "rsa", "algorithm": "rsa-sha256", "key_file": str(dkim.rsa_file)},
            {"domain": "alpha.test", "selector": "ed", "algorithm": "ed25519-sha256",
             "key_file": str(dkim.ed_file)},
        ]
    return cfg


class RunningMta:
    """An MtaApp on its own event loop thread, so tests can drive it with real clients synchronously."""

    def __init__(self, cfg: MtaConfig) -> None:
        self.cfg = cfg
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.app = MtaApp(cfg)
        self.thread.start()
        self.run(self.app.start())

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> Any:
        async def _c() -> Any:
            return fn()
        return self.run(_c())

    @property
    def submission_port(self) -> int:
        return self.app.listen_ports["submission"][0][1]

    @property
    def smtps_port(self) -> int:
        return self.app.listen_ports["implicit_tls"][0][1]

    @property
    def inbound_port(self) -> int:
        return self.app.listen_ports["inbound"][0][1]

    def stop(self) -> None:
        if self.thread.is_alive():
            try:
                self.run(self.app.stop())
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self.thread.join(10)


@pytest.fixture
def mta_factory() -> Iterator[Callable[[dict[str, Any]], RunningMta]]:
    started: list[RunningMta] = []

    def start(cfg: dict[str, Any]) -> RunningMta:
        m = RunningMta(parse_config(cfg))
        started.append(m)
        return m

    yield start
    for m in started:
        m.stop()


# ------------------------------------------------------------------------------------ swaks


@dataclass
class SwaksResult:
    returncode: int
    transcript: str

    def replies(self) -> list[str]:
        """Server reply lines (first line of each reply) in order."""
        out = []
        for line in self.transcript.splitlines():
            m = re.match(r"^\s*<[-~*]{1,2}\s+(\d{3}[ -].*)$", line)
            if m:
                out.append(m.group(1))
        return out

    def last_reply(self) -> str:
        r = [x for x in self.replies() if x[3] == " "]
        return r[-1] if r else ""

    def has(self, prefix: str) -> bool:
        return any(r.startswith(prefix) for r in self.replies())


def swaks(*args: str, timeout: float = 30.0, stdin: str | None = None) -> SwaksResult:
    exe = shutil.which("swaks")
    if exe is None:
        pytest.fail("swaks is not installed: run scripts/install-system-deps.sh")
    env = dict(os.environ, LC_ALL="C")
    p = subprocess.run([exe, "--timeout", "20", *args], capture_output=True, text=True, timeout=timeout,
                       env=env, check=False, input=stdin)
    return SwaksResult(p.returncode, p.stdout + p.stderr)


def submit(mta: RunningMta, *, user: str = "alice", password: str | None = None, mail_from: str = "news@alpha.test",
           to: str = "user@example.test", header_from: str | None = None, extra: list[str] | None = None,
           tls: str = "starttls", body: str = "Hello from the test suite.") -> SwaksResult:
    stdin = None
    if len(body) > 10_000:
        stdin, body = body, "-"
    args = ["--server", f"{MTA_ADDR}:{mta.submission_port if tls != 'smtps' else mta.smtps_port}",
            "--ehlo", "client.test", "--from", mail_from, "--to", to,
            "--header", f"From: {header_from or mail_from}", "--header", "Subject: test", "--body", body]
    if tls == "starttls":
        args.append("--tls")
    elif tls == "smtps":
        args.append("--tls-on-connect")
    if user:
        args += ["--auth", "PLAIN", "--auth-user", user, "--auth-password",
                 password if password is not None else PASSWORDS[user]]
    return swaks(*args, *(extra or []), stdin=stdin)


# ------------------------------------------------------------------------------------ PostgreSQL

PG_ADDR = "127.0.0.55"


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl as the 'postgres' user) on 127.0.0.55."""
    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        pytest.fail("PostgreSQL is not installed: run scripts/install-system-deps.sh")
    bindir = bins[-1].parent
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="mta-pg-"))
    shutil.chown(base, "postgres", "postgres")
    data = base / "data"
    port = free_port(PG_ADDR)

    def as_pg(*cmd: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *cmd], check=True, capture_output=True)

    as_pg(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    as_pg(str(bindir / "pg_ctl"), "-D", str(data), "-w", "-l", str(base / "pg.log"), "-o",
          f"-c listen_addresses={PG_ADDR} -p {port} -k {base} -c fsync=off", "start")
    try:
        yield f"postgresql://postgres@{PG_ADDR}:{port}/postgres"
    finally:
        subprocess.run(["runuser", "-u", "postgres", "--", str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast",
                        "stop"], capture_output=True, check=False)
        shutil.rmtree(base, ignore_errors=True)
