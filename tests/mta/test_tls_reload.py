"""A renewed certificate is served once its files change, without a restart (issue 11 item 8)."""

from __future__ import annotations

import datetime
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .conftest import MTA_ADDR, base_config, free_port, wait_for

pytestmark = pytest.mark.mta

POLICY = "version: STSv1\nmode: enforce\nmx: mta.test\nmax_age: 86400\n"


def write_cert(directory: Path, common_name: str) -> None:
    """Write tls.crt/tls.key the way the kubelet updates a Secret volume: new files swapped in at once."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("mta.test")]), critical=False)
            .sign(key, hashes.SHA256()))
    for fname, data in (("tls.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())),
                        ("tls.crt", cert.public_bytes(serialization.Encoding.PEM))):
        tmp = directory / f".{fname}.new"
        tmp.write_bytes(data)
        tmp.replace(directory / fname)


def _cn(der: bytes | None) -> str:
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def _client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def starttls_cn(port: int) -> str:
    with smtplib.SMTP(MTA_ADDR, port, timeout=20) as c:
        c.starttls(context=_client_ctx())
        assert isinstance(c.sock, ssl.SSLSocket)
        return _cn(c.sock.getpeercert(binary_form=True))


def implicit_cn(port: int, server_name: str | None = "mta.test") -> str:
    with socket.create_connection((MTA_ADDR, port), timeout=20) as raw, \
            _client_ctx().wrap_socket(raw, server_hostname=server_name) as s:
        return _cn(s.getpeercert(binary_form=True))


def openssl_cn(port: int, *extra: str) -> str:
    """The subject CN openssl s_client sees (the tool operators use to check a renewal)."""
    p = subprocess.run(["openssl", "s_client", "-connect", f"{MTA_ADDR}:{port}", *extra],
                       input="", capture_output=True, text=True, timeout=30, check=False)
    for line in p.stdout.splitlines():
        if line.startswith("subject="):
            return line.split("CN", 1)[1].lstrip(" =").split(",")[0].strip()
    return ""


def test_new_certificate_is_served_on_every_tls_listener(tmp_path: Path, tls_files: Any,
                                                         password_hashes: dict[str, str], mta_factory: Any) -> None:
    d = tmp_path / "tls"
    d.mkdir()
    write_cert(d, "old.mta.test")
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["tls"] = {"cert_file": str(d / "tls.crt"), "key_file": str(d / "tls.key")}
    cfg["mta_sts"] = {"policy": POLICY}
    cfg["http"]["mta_sts_port"] = free_port(MTA_ADDR)
    mta = mta_factory(cfg)
    sts_port = mta.app.mta_sts_port
    assert sts_port is not None
    assert starttls_cn(mta.submission_port) == "old.mta.test"
    assert implicit_cn(mta.smtps_port) == "old.mta.test"
    assert implicit_cn(sts_port, "mta-sts.mta.test") == "old.mta.test"
    assert openssl_cn(mta.submission_port, "-starttls", "smtp") == "old.mta.test"

    write_cert(d, "new.mta.test")
    wait_for(lambda: starttls_cn(mta.submission_port) == "new.mta.test", 60, 0.5)
    assert implicit_cn(mta.smtps_port) == "new.mta.test"
    assert implicit_cn(mta.smtps_port, None) == "new.mta.test"  # clients that send no SNI too
    assert implicit_cn(sts_port, "mta-sts.mta.test") == "new.mta.test"
    assert openssl_cn(mta.submission_port, "-starttls", "smtp") == "new.mta.test"
    assert openssl_cn(mta.smtps_port) == "new.mta.test"


def test_unloadable_files_keep_the_previous_certificate(tmp_path: Path, tls_files: Any,
                                                       password_hashes: dict[str, str], mta_factory: Any) -> None:
    d = tmp_path / "tls"
    d.mkdir()
    write_cert(d, "good.mta.test")
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["tls"] = {"cert_file": str(d / "tls.crt"), "key_file": str(d / "tls.key")}
    mta = mta_factory(cfg)
    (d / "tls.crt").write_bytes(b"-----BEGIN CERTIFICATE-----\nnot a certificate\n")
    assert mta.app.tls is not None
    assert mta.call(mta.app.tls.check) is False
    assert starttls_cn(mta.submission_port) == "good.mta.test"
