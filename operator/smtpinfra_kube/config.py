"""Where the API server is and how to authenticate: from a kubeconfig or from inside a pod.

Pure parsing (`from_kubeconfig_data`) is separate from reading files, so it is tested without a
cluster. Client certificates given inline (`client-certificate-data`) are loaded into the TLS
context through a private temporary directory that is removed at once: `ssl` loads key pairs only
from files, and nothing of the key stays on disk.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ConfigError", "KubeConfig"]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class ConfigError(ValueError):
    """No usable cluster configuration (no kubeconfig, or one that names no cluster)."""


@dataclass(frozen=True)
class KubeConfig:
    """The API server's URL and the credentials to reach it."""

    server: str
    ca_data: str | None = None
    """PEM of the certificate authorities to trust (None: the system's)."""
    ca_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    cert_file: str | None = None
    key_file: str | None = None
    token: str | None = None
    token_file: str | None = None
    """Re-read on every request context build: in-cluster tokens are rotated by the kubelet."""
    insecure: bool = False

    @classmethod
    def from_kubeconfig_data(cls, data: dict[str, Any], context: str | None = None,
                             base: Path | None = None) -> KubeConfig:
        """The configuration of `context` (default: the current context) of a parsed kubeconfig."""
        contexts = {c["name"]: c.get("context") or {} for c in data.get("contexts") or []}
        name = context or data.get("current-context") or ""
        if name not in contexts and context is not None:
            raise ConfigError(f"kubeconfig has no context {context!r}")
        chosen: dict[str, Any] = contexts.get(name) or next(iter(contexts.values()), {})
        clusters = {c["name"]: c.get("cluster") or {} for c in data.get("clusters") or []}
        users = {u["name"]: u.get("user") or {} for u in data.get("users") or []}
        cluster: dict[str, Any] = clusters.get(chosen.get("cluster", "")) or next(iter(clusters.values()), {})
        if not cluster.get("server"):
            raise ConfigError("kubeconfig names no cluster server")
        user: dict[str, Any] = users.get(chosen.get("user", "")) or {}

        def file(key: str, holder: dict[str, Any]) -> str | None:
            value = holder.get(key)
            if not value:
                return None
            path = Path(str(value))
            return str(path if path.is_absolute() or base is None else base / path)

        def decoded(key: str, holder: dict[str, Any]) -> bytes | None:
            return base64.b64decode(holder[key]) if holder.get(key) else None

        ca = decoded("certificate-authority-data", cluster)
        return cls(server=str(cluster["server"]).rstrip("/"), ca_data=ca.decode() if ca else None,
                   ca_file=file("certificate-authority", cluster), cert_data=decoded("client-certificate-data", user),
                   key_data=decoded("client-key-data", user), cert_file=file("client-certificate", user),
                   key_file=file("client-key", user), token=user.get("token") or None,
                   token_file=file("tokenFile", user), insecure=bool(cluster.get("insecure-skip-tls-verify")))

    @classmethod
    def from_kubeconfig(cls, path: Path | str | None = None, context: str | None = None) -> KubeConfig:
        """A kubeconfig file: `path`, else the first of $KUBECONFIG, else ~/.kube/config."""
        if path is None:
            path = (os.environ.get("KUBECONFIG") or "").split(os.pathsep)[0] or Path.home() / ".kube" / "config"
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except OSError as error:
            raise ConfigError(f"cannot read kubeconfig {path}: {error}") from error
        return cls.from_kubeconfig_data(data, context, base=path.parent)

    @classmethod
    def in_cluster(cls, root: Path = SERVICE_ACCOUNT_DIR) -> KubeConfig:
        """The pod's service account (its rotated token, the cluster CA) and KUBERNETES_SERVICE_HOST/PORT."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host or not (root / "token").exists():
            raise ConfigError("not running in a cluster (no KUBERNETES_SERVICE_HOST or service-account token)")
        host = f"[{host}]" if ":" in host else host
        return cls(server=f"https://{host}:{port}", ca_file=str(root / "ca.crt"), token_file=str(root / "token"))

    @classmethod
    def load(cls, kubeconfig: Path | str | None = None) -> KubeConfig:
        """In-cluster when running in a pod (and no kubeconfig was named), else the kubeconfig."""
        if kubeconfig is None:
            try:
                return cls.in_cluster()
            except ConfigError:
                pass
        return cls.from_kubeconfig(kubeconfig)

    def bearer_token(self) -> str | None:
        """The token to send now (a token file is read each time: the kubelet rotates it)."""
        if self.token_file:
            try:
                return Path(self.token_file).read_text().strip() or self.token
            except OSError:
                return self.token
        return self.token

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context for an https server (trusted CAs, client certificate); None for http."""
        if not self.server.startswith("https:"):
            return None
        context = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_data or self.cert_file:
            with tempfile.TemporaryDirectory(prefix="smtpinfra-kube-") as spill:
                cert, key = self.cert_file, self.key_file
                if self.cert_data:
                    cert = str(Path(spill) / "client.crt")
                    Path(cert).write_bytes(self.cert_data)
                if self.key_data:
                    key = str(Path(spill) / "client.key")
                    Path(key).touch(mode=0o600)
                    Path(key).write_bytes(self.key_data)
                context.load_cert_chain(str(cert), key)
        return context
