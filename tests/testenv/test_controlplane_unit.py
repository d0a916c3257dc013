"""Parts of the control-plane module that need no running processes: PKI, kubeconfig, safety."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from smtpinfra_testenv import controlplane as cpmod
from smtpinfra_testenv import pki as pkimod
from smtpinfra_testenv.controlplane.kubeconfigs import kubeconfig_text

pytestmark = pytest.mark.testenv


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_pki_identities_and_sans(tmp_path: Path) -> None:
    pki = pkimod.ensure_pki(tmp_path / "pki", "10.96.0.1")
    ca = _cert(pki.ca_cert)
    serving = _cert(pki.apiserver_cert)
    serving.verify_directly_issued_by(ca)
    sans = serving.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(sans.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("10.96.0.1"),
    }
    assert set(sans.get_values_for_type(x509.DNSName)) == {
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    }
    eku = serving.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]

    expected = {
        pkimod.ADMIN: ("smtp-infra-admin", ["system:masters"]),
        pkimod.CONTROLLER_MANAGER: ("system:kube-controller-manager", []),
        pkimod.SCHEDULER: ("system:kube-scheduler", []),
    }
    for who, (cn, orgs) in expected.items():
        cert = _cert(pki.client_cert(who))
        cert.verify_directly_issued_by(ca)
        assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [cn]
        assert [a.value for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)] == orgs
    # The front-proxy client must NOT chain to the main CA (else it could impersonate anyone).
    front = _cert(pki.client_cert(pkimod.FRONT_PROXY_CLIENT))
    front.verify_directly_issued_by(_cert(pki.front_proxy_ca_cert))
    with pytest.raises(ValueError):
        front.verify_directly_issued_by(ca)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert oct(pki.ca_key.stat().st_mode & 0o777) == "0o600"


def test_pki_is_generated_once(tmp_path: Path) -> None:
    root = tmp_path / "pki"
    pkimod.ensure_pki(root, "10.96.0.1")
    before = {p.name: p.read_bytes() for p in root.iterdir()}
    pkimod.ensure_pki(root, "10.96.0.1")
    assert {p.name: p.read_bytes() for p in root.iterdir()} == before


def test_attach_reads_the_kubeconfig_extension(tmp_path: Path) -> None:
    pki = pkimod.ensure_pki(tmp_path / "pki", "10.96.0.1")
    ext = {"state-dir": str(tmp_path), "pod-cidr": "127.66.0.0/16", "service-cidr": "10.97.0.0/16", "nodes": ["n0"]}
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(kubeconfig_text("https://127.0.0.1:1234", pki, pkimod.ADMIN, ext))
    cp = cpmod.attach(kubeconfig)
    assert cp.server == "https://127.0.0.1:1234"
    assert cp.state_dir == tmp_path
    assert (cp.pod_cidr, cp.service_cidr, cp.node_names) == ("127.66.0.0/16", "10.97.0.0/16", ("n0",))

    plain = tmp_path / "plain"
    plain.write_text(kubeconfig_text("https://127.0.0.1:99", pki, pkimod.ADMIN))
    other = cpmod.attach(plain)
    assert other.state_dir is None and other.pod_cidr == cpmod.POD_CIDR


def test_purge_refuses_directories_it_did_not_create(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    (tmp_path / "logs").mkdir()
    with pytest.raises(cpmod.ControlPlaneError, match=r"precious\.txt"):
        cpmod.down(tmp_path, purge=True)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_status_of_an_empty_state_dir(tmp_path: Path) -> None:
    st = cpmod.status(tmp_path)
    assert not st.running and not st.api_healthy and st.components == ()
