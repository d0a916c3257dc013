"""Each component's command line and environment (the one place to read how the cluster is configured)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from smtpinfra_testenv import pki as pkimod

from .audit import AUDIT_LOG, audit_policy
from .kubeconfigs import write_file
from .layout import COMPONENTS, KWOK_NODE_ANNOTATION, KWOK_STAGES, NODE_IP, SA_ISSUER
from .state import State


def kwok_stages(sd: Path) -> Path:
    """kwok's stages with the local pod runner's image prefixes excluded (``$SMTP_INFRA_LOCAL_IMAGES``).

    The shipped file skips ``smtp-infra/`` images; other prefixes are written into the state dir.
    """
    from smtpinfra_testenv import podrunner

    prefixes = podrunner.image_prefixes_from_env()
    if prefixes == podrunner.DEFAULT_IMAGE_PREFIXES:
        return KWOK_STAGES
    default = f"'{podrunner.kwok_image_expression(podrunner.DEFAULT_IMAGE_PREFIXES)}'"
    text = KWOK_STAGES.read_text().replace(default, json.dumps(podrunner.kwok_image_expression(prefixes)))
    write_file(sd / "kwok-stages.yaml", text, 0o644)
    return sd / "kwok-stages.yaml"


def command_lines(sd: Path, bin_dir: Path, st: State, pki: pkimod.Pki) -> dict[str, list[str]]:
    """The exact flags of every component (the one place to read how the cluster is configured)."""
    p = st.ports
    kc = sd / "kubeconfigs"
    b = {name: str(bin_dir / name) for name in COMPONENTS}
    etcd_client = f"http://127.0.0.1:{p['etcd-client']}"
    etcd_peer = f"http://127.0.0.1:{p['etcd-peer']}"
    kcm_kc = str(kc / "kube-controller-manager.kubeconfig")
    sched_kc = str(kc / "kube-scheduler.kubeconfig")
    key, sel = KWOK_NODE_ANNOTATION
    return {
        "etcd": [
            b["etcd"],
            "--name=testenv",
            f"--data-dir={sd / 'etcd'}",
            f"--listen-client-urls={etcd_client}",
            f"--advertise-client-urls={etcd_client}",
            f"--listen-peer-urls={etcd_peer}",
            f"--initial-advertise-peer-urls={etcd_peer}",
            f"--initial-cluster=testenv={etcd_peer}",
            "--initial-cluster-state=new",
            # A throwaway test cluster: skipping fsync makes every API write several times faster.
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            b["kube-apiserver"],
            f"--etcd-servers={etcd_client}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-apiserver']}",
            "--advertise-address=127.0.0.1",
            # The kubernetes Service would get 127.0.0.1 as endpoint, which Endpoints validation
            # refuses (loopback); nothing in-cluster needs it, so do not reconcile it at all.
            "--endpoint-reconciler-type=none",
            f"--cert-dir={sd / 'kube-apiserver'}",
            f"--tls-cert-file={pki.apiserver_cert}",
            f"--tls-private-key-file={pki.apiserver_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--requestheader-client-ca-file={pki.front_proxy_ca_cert}",
            f"--requestheader-allowed-names={pkimod.FRONT_PROXY_CLIENT.common_name}",
            "--requestheader-username-headers=X-Remote-User",
            "--requestheader-group-headers=X-Remote-Group",
            "--requestheader-extra-headers-prefix=X-Remote-Extra-",
            f"--proxy-client-cert-file={pki.client_cert(pkimod.FRONT_PROXY_CLIENT)}",
            f"--proxy-client-key-file={pki.client_key(pkimod.FRONT_PROXY_CLIENT)}",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction",
            "--allow-privileged=true",
            f"--service-cluster-ip-range={st.service_cidr}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={pki.sa_pub}",
            f"--service-account-signing-key-file={pki.sa_key}",
            "--profiling=false",
            f"--audit-policy-file={audit_policy(sd)}",
            f"--audit-log-path={sd / AUDIT_LOG}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
            "--audit-log-maxsize=200",
            "--audit-log-maxbackup=1",
        ],
        "kube-controller-manager": [
            b["kube-controller-manager"],
            f"--kubeconfig={kcm_kc}",
            f"--authentication-kubeconfig={kcm_kc}",
            f"--authorization-kubeconfig={kcm_kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-controller-manager']}",
            f"--cert-dir={sd / 'kube-controller-manager'}",
            "--use-service-account-credentials=true",
            f"--root-ca-file={pki.ca_cert}",
            f"--service-account-private-key-file={pki.sa_key}",
            f"--cluster-signing-cert-file={pki.ca_cert}",
            f"--cluster-signing-key-file={pki.ca_key}",
            f"--service-cluster-ip-range={st.service_cidr}",
            "--leader-elect=false",
            # Pod IPs come from kwok's --cidr, not from per-node podCIDRs. Those are loopback
            # addresses, which Endpoints and EndpointSlices refuse: the endpoint controllers could
            # only fail and retry (with 200 Services, ~3,500 failed writes and ~4,900 Event writes
            # a minute, most of the API server's load), so they do not run here.
            "--controllers=*,-node-ipam-controller,-endpoints-controller,-endpointslice-controller",
            "--allocate-node-cidrs=false",
            # The default client rate limit (20 qps) alone adds seconds to startup, when every
            # controller fetches its service-account token; nothing else competes for this API.
            "--kube-api-qps=200",
            "--kube-api-burst=400",
            "--profiling=false",
        ],
        "kube-scheduler": [
            b["kube-scheduler"],
            f"--kubeconfig={sched_kc}",
            f"--authentication-kubeconfig={sched_kc}",
            f"--authorization-kubeconfig={sched_kc}",
            "--bind-address=127.0.0.1",
            f"--secure-port={p['kube-scheduler']}",
            f"--cert-dir={sd / 'kube-scheduler'}",
            "--leader-elect=false",
            "--profiling=false",
        ],
        "kwok": [
            b["kwok"],
            f"--kubeconfig={kc / 'kwok.kubeconfig'}",
            f"--config={kwok_stages(sd)}",
            f"--manage-nodes-with-annotation-selector={key}={sel}",
            f"--cidr={st.pod_cidr}",
            f"--node-ip={NODE_IP}",
            "--node-lease-duration-seconds=40",
            f"--server-address=127.0.0.1:{p['kwok']}",
        ],
    }


def component_env(sd: Path, name: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("KUBECONFIG", None)
    # Loopback must never go through a proxy configured for the registries.
    env["NO_PROXY"] = env["no_proxy"] = ",".join(x for x in (env.get("NO_PROXY", ""), "127.0.0.0/8,localhost") if x)
    if name == "kwok":
        # kwok silently merges ~/.kwok/kwok.yaml into its config; give it an empty home instead.
        home = sd / "kwok-home"
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
    return env

