"""Certificates and keys for the local control plane.

Everything is generated once per state directory and then reused, so a restarted control plane
keeps the same CA and the kubeconfigs handed out earlier stay valid. ECDSA P-256 keys are used
throughout because they are generated in milliseconds (RSA would dominate a cold ``up``) and every
component, including service-account token signing (ES256), accepts them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = dt.timedelta(days=3650)
_BACKDATE = dt.timedelta(hours=1)  # tolerate small clock differences between processes


@dataclass(frozen=True)
class ClientIdentity:
    """A client certificate to issue: file stem, user name (CN) and groups (O)."""

    stem: str
    common_name: str
    organizations: tuple[str, ...] = ()


# Identities the control plane itself needs. The CNs are the user names the API server's
# bootstrap RBAC policy grants the components their permissions to.
ADMIN = ClientIdentity("admin", "smtp-infra-admin", ("system:masters",))
CONTROLLER_MANAGER = ClientIdentity("kube-controller-manager", "system:kube-controller-manager")
SCHEDULER = ClientIdentity("kube-scheduler", "system:kube-scheduler")
KWOK = ClientIdentity("kwok", "kwok-controller", ("system:masters",))
CLIENTS = (ADMIN, CONTROLLER_MANAGER, SCHEDULER, KWOK)
# The API server's client identity towards aggregated API servers, signed by its own CA (the
# "front proxy" CA) as Kubernetes requires. Configuring it also publishes the requestheader CA
# that kube-controller-manager and kube-scheduler look up for their delegated authentication.
FRONT_PROXY_CLIENT = ClientIdentity("front-proxy-client", "front-proxy-client")


@dataclass(frozen=True)
class Pki:
    """Paths of all PKI material in one state directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def apiserver_cert(self) -> Path:
        return self.root / "kube-apiserver.crt"

    @property
    def apiserver_key(self) -> Path:
        return self.root / "kube-apiserver.key"

    @property
    def front_proxy_ca_cert(self) -> Path:
        return self.root / "front-proxy-ca.crt"

    @property
    def front_proxy_ca_key(self) -> Path:
        return self.root / "front-proxy-ca.key"

    @property
    def sa_key(self) -> Path:
        return self.root / "sa.key"

    @property
    def sa_pub(self) -> Path:
        return self.root / "sa.pub"

    def client_cert(self, who: ClientIdentity) -> Path:
        return self.root / f"{who.stem}.crt"

    def client_key(self, who: ClientIdentity) -> Path:
        return self.root / f"{who.stem}.key"


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write_private(path: Path, data: bytes) -> None:
    """Write key material readable by the owner only (the API server does not care, humans might)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: expected an EC private key")
    return key


def _issue(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    usages: list[x509.ObjectIdentifier],
    sans: list[x509.GeneralName] | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _load_or_make_ca(
    cert_path: Path, key_path: Path, common_name: str
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    if cert_path.exists() and key_path.exists():
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), _load_key(key_path)
    key = _new_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def ensure_pki(root: Path, service_ip: str) -> Pki:
    """Create whatever PKI material is missing under ``root`` and return its paths.

    Existing files are never regenerated: a CA change would invalidate every kubeconfig and
    service-account token issued so far.
    """
    pki = Pki(root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)

    ca_cert, ca_key = _load_or_make_ca(pki.ca_cert, pki.ca_key, "smtp-infra-testenv-ca")
    fp_cert, fp_key = _load_or_make_ca(
        pki.front_proxy_ca_cert, pki.front_proxy_ca_key, "smtp-infra-testenv-front-proxy-ca"
    )

    if not (pki.apiserver_cert.exists() and pki.apiserver_key.exists()):
        key = _new_key()
        sans: list[x509.GeneralName] = [
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address(service_ip)),
            *(
                x509.DNSName(n)
                for n in (
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                )
            ),
        ]
        cert = _issue(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]),
            key,
            ca_cert,
            ca_key,
            usages=[ExtendedKeyUsageOID.SERVER_AUTH],
            sans=sans,
        )
        _write_private(pki.apiserver_key, _key_pem(key))
        _write_public(pki.apiserver_cert, cert.public_bytes(serialization.Encoding.PEM))

    signers = [(who, ca_cert, ca_key) for who in CLIENTS] + [(FRONT_PROXY_CLIENT, fp_cert, fp_key)]
    for who, signer_cert, signer_key in signers:
        if pki.client_cert(who).exists() and pki.client_key(who).exists():
            continue
        key = _new_key()
        attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in who.organizations]
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, who.common_name))
        cert = _issue(x509.Name(attrs), key, signer_cert, signer_key, usages=[ExtendedKeyUsageOID.CLIENT_AUTH])
        _write_private(pki.client_key(who), _key_pem(key))
        _write_public(pki.client_cert(who), cert.public_bytes(serialization.Encoding.PEM))

    if not (pki.sa_key.exists() and pki.sa_pub.exists()):
        key = _new_key()
        _write_private(pki.sa_key, _key_pem(key))
        _write_public(
            pki.sa_pub,
            key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        )
    return pki
