"""Operations: HTTP endpoints, SIGTERM drain, config reload, PROXY protocol, the CLI."""

from __future__ import annotations

import json
import logging
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpinfra_mta.config import parse_config

from .conftest import (
    MTA_ADDR,
    PASSWORDS,
    RunningMta,
    base_config,
    free_port,
    https_get,
    submit,
    wait_for,
    wait_port,
)

pytestmark = pytest.mark.mta


def _get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://{MTA_ADDR}:{port}{path}", timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_metrics_health_and_stats(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                  mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(base_config(tmp_path, tls_files, password_hashes))
    port = mta.app.http_port
    assert port is not None
    assert submit(mta).has("250 2.0.0 OK queued")
    assert submit(mta, password="nope").has("535")
    assert _get(port, "/healthz") == (200, b"ok\n")
    assert _get(port, "/readyz")[0] == 200
    status, body = _get(port, "/metrics")
    text = body.decode()
    assert status == 200
    assert 'smtpinfra_mta_accepted_total{listener="submission",pool="alpha",tenant="alpha"} 1.0' in text
    assert 'smtpinfra_mta_auth_failures_total{listener="submission"} 1.0' in text
    assert "smtpinfra_mta_queue_messages 1.0" in text
    stats = json.loads(_get(port, "/stats")[1])
    assert stats["queue"]["messages"] == 1 and stats["hostname"] == "mta.test"
    assert _get(port, "/nope")[0] == 404
    mta.app.draining = True
    assert _get(port, "/readyz")[0] == 503


STS_POLICY = "version: STSv1\r\nmode: enforce\r\nmx: mta.test\r\nmax_age: 604800\r\n"


def _get_full(port: int, path: str) -> tuple[int, str, bytes]:
    """(status, Content-Type, body) over plain HTTP."""
    try:
        with urllib.request.urlopen(f"http://{MTA_ADDR}:{port}{path}", timeout=5) as r:
            return r.status, r.headers["Content-Type"], r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read()


def test_mta_sts_policy_is_served_over_http_and_https(tmp_path: Path, tls_files: Any,
                                                      password_hashes: dict[str, str], mta_factory: Any) -> None:
    """RFC 8461 3.3: GET /.well-known/mta-sts.txt answers 200, text/plain, the policy byte for byte."""
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["mta_sts"] = {"policy": STS_POLICY}
    cfg["http"]["mta_sts_port"] = free_port(MTA_ADDR)
    mta: RunningMta = mta_factory(cfg)
    port, https = mta.app.http_port, mta.app.mta_sts_port
    assert port is not None and https is not None and https == cfg["http"]["mta_sts_port"]
    assert _get_full(port, "/.well-known/mta-sts.txt") == (200, "text/plain", STS_POLICY.encode())
    # the HTTPS listener presents the MTA's certificate (tls.cert_file) and verifies as such
    assert https_get(MTA_ADDR, https, "/.well-known/mta-sts.txt", tls_files[0], "mta.test") \
        == (200, "text/plain", STS_POLICY.encode())
    # the public HTTPS listener serves the policy only: no metrics, stats or health there
    for path in ("/metrics", "/stats", "/healthz", "/"):
        assert https_get(MTA_ADDR, https, path, tls_files[0], "mta.test")[0] == 404, path
    assert _get(port, "/healthz") == (200, b"ok\n")
    # a reloaded config changes what is served, without a restart
    changed = STS_POLICY.replace("enforce", "testing")
    mta.call(lambda: mta.app.reload(parse_config({**cfg, "mta_sts": {"policy": changed}})))
    assert _get_full(port, "/.well-known/mta-sts.txt")[2] == changed.encode()
    assert https_get(MTA_ADDR, https, "/.well-known/mta-sts.txt", tls_files[0], "mta.test")[2] == changed.encode()
    # a TLS handshake that fails (wrong name) leaves the listener working
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(MTA_ADDR, https, "/.well-known/mta-sts.txt", tls_files[0], "mta-sts.other.test")
    assert https_get(MTA_ADDR, https, "/.well-known/mta-sts.txt", tls_files[0], "mta.test")[0] == 200


def test_mta_sts_path_is_404_without_a_policy(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                              mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(base_config(tmp_path, tls_files, password_hashes))
    assert mta.app.http_port is not None and mta.app.mta_sts_port is None  # no HTTPS listener either
    status, ctype, _ = _get_full(mta.app.http_port, "/.well-known/mta-sts.txt")
    assert (status, ctype) == (404, "text/plain")


def test_logs_never_contain_passwords_or_bodies(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                                mta_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    mta: RunningMta = mta_factory(base_config(tmp_path, tls_files, password_hashes))
    assert submit(mta, body="TOP-SECRET-BODY").has("250 2.0.0 OK queued")
    assert submit(mta, password="WRONG-PASSWORD-XYZ").has("535")
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    for secret in ("TOP-SECRET-BODY", "WRONG-PASSWORD-XYZ", PASSWORDS["alice"]):
        assert secret not in text


def test_proxy_protocol_listener(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                 mta_factory: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="smtpinfra_mta")
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["listeners"]["inbound"]["proxy_protocol"] = True
    mta: RunningMta = mta_factory(cfg)
    # without a PROXY header the connection is dropped, no banner
    with socket.create_connection((MTA_ADDR, mta.inbound_port), timeout=10) as s:
        s.sendall(b"EHLO x.test\r\n")
        assert s.recv(100) == b""
    with socket.create_connection((MTA_ADDR, mta.inbound_port), timeout=10) as s:
        f = s.makefile("rb")
        s.sendall(b"PROXY TCP4 198.51.100.7 127.0.0.10 40000 25\r\n")
        assert f.readline().startswith(b"220 ")
        for cmd, code in [(b"HELO x.test", b"250"), (b"MAIL FROM:<>", b"250"),
                          (b"RCPT TO:<dsn@bounces.mta.test>", b"250"), (b"DATA", b"354"),
                          (b"Subject: hi\r\n\r\nhello\r\n.", b"250"), (b"QUIT", b"221")]:
            s.sendall(cmd + b"\r\n")
            assert f.readline()[:3] == code, cmd
    wait_for(lambda: any(getattr(r, "client", None) == "198.51.100.7" for r in caplog.records))


def _write(path: Path, cfg: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(cfg))
    tmp.replace(path)  # atomic, like a ConfigMap symlink swap


def _start(cfg: dict[str, Any], path: Path) -> subprocess.Popen[bytes]:
    _write(path, cfg)
    proc = subprocess.Popen([sys.executable, "-m", "smtpinfra_mta", "serve", "--config", str(path)],
                            stdout=subprocess.DEVNULL, stderr=(path.parent / "mta.log").open("ab"))
    wait_port(MTA_ADDR, cfg["listeners"]["submission"]["port"], timeout=20)
    return proc


def _tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def test_sigterm_drains_open_sessions_and_refuses_new(tmp_path: Path, tls_files: Any,
                                                      password_hashes: dict[str, str]) -> None:
    cfg = base_config(tmp_path, tls_files, password_hashes)
    port = cfg["listeners"]["submission"]["port"]
    proc = _start(cfg, tmp_path / "mta.yaml")
    try:
        s = smtplib.SMTP(MTA_ADDR, port, timeout=20)
        s.starttls(context=_tls())
        s.login("alice", PASSWORDS["alice"])
        assert s.mail("n@alpha.test")[0] == 250
        assert s.rcpt("r@example.test")[0] == 250
        proc.send_signal(signal.SIGTERM)

        def greeting() -> bytes:
            with socket.create_connection((MTA_ADDR, port), timeout=10) as new:
                line = new.makefile("rb").readline()
                if line.startswith(b"220"):
                    new.sendall(b"QUIT\r\n")
                return line
        # until the signal is handled a new client still gets 220; from then on, 421 (never a refusal)
        wait_for(lambda: greeting().startswith(b"421 4.3.2"), timeout=30, interval=0.1)
        code, reply = s.data(b"From: n@alpha.test\r\nSubject: in flight\r\n\r\nbody\r\n")
        assert code == 250 and b"queued as" in reply
        s.quit()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    # the in-flight message is in the spool for the next start
    assert len(list((tmp_path / "spool" / "queue").glob("*.msg"))) == 1


def test_config_reload_without_dropping_sessions(tmp_path: Path, tls_files: Any,
                                                 password_hashes: dict[str, str]) -> None:
    cfg = base_config(tmp_path, tls_files, password_hashes)
    port = cfg["listeners"]["submission"]["port"]
    path = tmp_path / "mta.yaml"
    proc = _start(cfg, path)
    try:
        open_session = smtplib.SMTP(MTA_ADDR, port, timeout=20)
        open_session.starttls(context=_tls())
        open_session.login("alice", PASSWORDS["alice"])
        with smtplib.SMTP(MTA_ADDR, port, timeout=20) as s:
            s.starttls(context=_tls())
            s.login("carol", PASSWORDS["carol"])
            assert s.mail("x@gamma.test")[0] == 550  # suspended
        cfg["tenants"][2]["suspended"] = False
        _write(path, cfg)

        def carol_can_send() -> bool:
            with smtplib.SMTP(MTA_ADDR, port, timeout=20) as s:
                s.starttls(context=_tls())
                s.login("carol", PASSWORDS["carol"])
                return bool(s.mail("x@gamma.test")[0] == 250)
        wait_for(carol_can_send, timeout=15, interval=0.5)
        # the session opened before the reload still works
        open_session.sendmail("n@alpha.test", ["r@example.test"], "From: n@alpha.test\r\n\r\nhi\r\n")
        open_session.quit()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_changed_credentials_file_is_reloaded_without_a_config_change(
        tmp_path: Path, tls_files: Any, password_hashes: dict[str, str]) -> None:
    """A rotated password in the mounted credentials Secret takes effect; the config file is untouched."""
    from smtpinfra_mta.passwords import hash_password

    cfg = base_config(tmp_path, tls_files, password_hashes)
    creds = tmp_path / "carol.credentials"
    creds.write_text(f"carol2:{hash_password('old-password-1')}\n")
    cfg["tenants"][2]["suspended"] = False
    cfg["tenants"][2]["credentials_file"] = str(creds)
    port = cfg["listeners"]["submission"]["port"]
    path = tmp_path / "mta.yaml"
    proc = _start(cfg, path)

    def login(password: str) -> bool:
        with smtplib.SMTP(MTA_ADDR, port, timeout=20) as s:
            s.starttls(context=_tls())
            try:
                s.login("carol2", password)
            except smtplib.SMTPAuthenticationError:
                return False
            return True

    try:
        assert login("old-password-1")
        replacement = tmp_path / "carol.credentials.new"  # swapped in like a Secret volume update
        replacement.write_text(f"carol2:{hash_password('new-password-2')}\n")
        replacement.replace(creds)
        wait_for(lambda: login("new-password-2"), timeout=15, interval=0.5)
        assert not login("old-password-1")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_cli_check_config_and_hash_password(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str]) -> None:
    path = tmp_path / "mta.yaml"
    _write(path, base_config(tmp_path, tls_files, password_hashes))
    r = subprocess.run([sys.executable, "-m", "smtpinfra_mta", "check-config", "--config", str(path)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ok"
    path.write_text("hostname: 'bad host'\n")
    r = subprocess.run([sys.executable, "-m", "smtpinfra_mta", "check-config", "--config", str(path)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 2 and "hostname: invalid domain name" in r.stderr
    r = subprocess.run([sys.executable, "-m", "smtpinfra_mta", "hash-password"], input="s3cret\n",
                       capture_output=True, text=True, check=False)
    from smtpinfra_mta.passwords import verify_password

    assert verify_password("s3cret", r.stdout.strip())
