"""Server TLS contexts that follow the certificate files, without restarting the process.

cert-manager renews a certificate by rewriting the Secret; the kubelet then swaps the mounted
files. Listeners keep the context they were created with, so that context stays as the front: its
SNI callback (which OpenSSL calls on every ClientHello, with or without a server name) hands each
handshake the context built from the files' current content. A pair of files that does not load
(a half-written update, a key that does not match) is logged and the previous context kept.
"""

from __future__ import annotations

import hashlib
import logging
import ssl
from pathlib import Path

log = logging.getLogger(__name__)


def server_tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


def _digest(cert_file: Path, key_file: Path) -> bytes | None:
    try:
        return hashlib.sha256(cert_file.read_bytes() + b"\0" + key_file.read_bytes()).digest()
    except OSError:
        return None


class ReloadingTls:
    """The listeners' context (``front``) and the one its handshakes currently use."""

    def __init__(self, cert_file: Path, key_file: Path) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self._digest = _digest(cert_file, key_file)
        self.current = server_tls_context(str(cert_file), str(key_file))
        self.front = server_tls_context(str(cert_file), str(key_file))
        self.front.sni_callback = self._select
        self.reloads = 0

    def _select(self, sslobj: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        if self.current is not self.front:
            sslobj.context = self.current
        return None

    def check(self) -> bool:
        """Reload when the files' content changed; True when a new certificate is now served."""
        digest = _digest(self.cert_file, self.key_file)
        if digest is None or digest == self._digest:
            return False
        try:
            ctx = server_tls_context(str(self.cert_file), str(self.key_file))
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.error("TLS certificate not reloaded; keeping the previous one", extra={"error": str(exc)})
            return False
        self._digest = digest
        self.current = ctx
        self.reloads += 1
        log.info("TLS certificate reloaded", extra={"cert_file": str(self.cert_file)})
        return True
