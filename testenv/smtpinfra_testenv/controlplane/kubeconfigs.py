"""Kubeconfigs for the admin and each component, from the PKI (pki.py makes the certificates)."""

from __future__ import annotations

import base64
import ipaddress
from pathlib import Path
from typing import Any

import yaml

from smtpinfra_testenv import pki as pkimod

from .layout import KUBECONFIG_EXTENSION, NODE_NAME_PREFIX
from .state import State


def kubeconfig_text(server: str, pki: pkimod.Pki, who: pkimod.ClientIdentity, ext: dict[str, Any] | None = None) -> str:
    def b64(p: Path) -> str:
        return base64.b64encode(p.read_bytes()).decode()

    cluster: dict[str, Any] = {"server": server, "certificate-authority-data": b64(pki.ca_cert)}
    if ext:
        cluster["extensions"] = [{"name": KUBECONFIG_EXTENSION, "extension": ext}]
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "smtp-infra-testenv", "cluster": cluster}],
        "users": [
            {
                "name": who.common_name,
                "user": {
                    "client-certificate-data": b64(pki.client_cert(who)),
                    "client-key-data": b64(pki.client_key(who)),
                },
            }
        ],
        "contexts": [
            {
                "name": "smtp-infra-testenv",
                "context": {"cluster": "smtp-infra-testenv", "user": who.common_name, "namespace": "default"},
            }
        ],
        "current-context": "smtp-infra-testenv",
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False)


def write_file(path: Path, text: str, mode: int = 0o600) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)


def first_service_ip(service_cidr: str) -> str:
    return str(ipaddress.ip_network(service_cidr)[1])


def write_kubeconfigs(sd: Path, st: State, pki: pkimod.Pki) -> str:
    """Write the admin kubeconfig (with our extension, for ``attach``) and the components' ones."""
    server = f"https://127.0.0.1:{st.ports['kube-apiserver']}"
    ext = {
        "state-dir": str(sd),
        "pod-cidr": st.pod_cidr,
        "service-cidr": st.service_cidr,
        "nodes": [f"{NODE_NAME_PREFIX}{i}" for i in range(st.nodes)],
    }
    write_file(sd / "kubeconfig", kubeconfig_text(server, pki, pkimod.ADMIN, ext))
    for who in (pkimod.CONTROLLER_MANAGER, pkimod.SCHEDULER, pkimod.KWOK):
        write_file(sd / "kubeconfigs" / f"{who.stem}.kubeconfig", kubeconfig_text(server, pki, who))
    return server


