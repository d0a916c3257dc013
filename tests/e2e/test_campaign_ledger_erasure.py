"""GDPR erasure reaches the shared PostgreSQL campaign ledger: an erasure-request Secret in a tenant's namespace
is done only once the real MTA pod confirmed and the address left the ledger rows of that namespace's
campaigns; the same address in another tenant's campaign stays (it is not this tenant's to erase).
The sender Job's image is one kwok simulates: the ledger rows are written here as a sender writes them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from smtpinfra_campaign.ledger import Claim, open_ledger
from smtpinfra_mta import campaign_contract as contract
from smtpinfra_operator.campaigns.erasure import REQUEST_LABEL, STATUS_ANNOTATION
from tests.e2e.common import NS, RCPT_DOMAIN, SENDER_DOMAIN, SINK_ADDR
from tests.e2e.test_smtpserver import server_manifest
from tests.kube import OperatorProcess, apply, find, get, operator_kubeconfig, wait_for
from tests.mta.conftest import postgres_url  # noqa: F401  (the session's PostgreSQL)

pytestmark = [pytest.mark.e2e, pytest.mark.operator]

TENANT, TENANT_NS = "e2e-acme", "tenant-e2e-acme"
SERVER = "ledgmta"


@pytest.fixture(scope="module")
def operator(crds: Any, postgres_url: str, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
             ) -> Iterator[OperatorProcess]:
    """The operator with a PostgreSQL campaign ledger, carrying out erasure requests every few seconds."""
    directory = tmp_path_factory.mktemp("operator")
    proc = OperatorProcess(crds, directory / "operator.log",
                           env={"SMTP_INFRA_CAMPAIGN_IMAGE": "registry.example/campaign-sender:e2e",
                                "SMTP_INFRA_CAMPAIGN_LEDGER_DSN": postgres_url, "SMTP_INFRA_RESYNC_SECONDS": "5"},
                           kubeconfig=operator_kubeconfig(crds, directory / "kubeconfig"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def claim(address: str, uid: str, row: int) -> Claim:
    return Claim(address, row, contract.message_id(uid, address, SENDER_DOMAIN), contract.idempotency_key(uid, address))


def test_erasure_request_clears_the_tenants_ledger_rows_only(platform, knot, sink_factory, postgres_url):  # noqa: F811
    cp = platform
    sink = sink_factory(addr=SINK_ADDR)
    apply(cp, server_manifest(SERVER, knot, sink.port, replicas=1))
    ann, bob = f"ann@{RCPT_DOMAIN}", f"bob@{RCPT_DOMAIN}"
    try:
        result = cp.kubectl("-n", NS, "wait", "--for=condition=Ready", f"smtpserver/{SERVER}", "--timeout=120s",
                            check=False)
        assert result.returncode == 0, result.stderr
        apply(cp, {"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Campaign",
                   "metadata": {"name": "ledgered", "namespace": TENANT_NS},
                   "spec": {"tenant": TENANT, "serverRef": {"name": SERVER, "namespace": NS},
                            "sender": {"address": f"news@{SENDER_DOMAIN}"}, "subject": "news",
                            "templates": {"text": "Hello"}, "recipients": {"inline": [ann, bob]},
                            "unsubscribe": {"url": "https://smtp.e2e.example.test/u",
                                            "mailto": "unsubscribe@e2e.example.test"},
                            "postalAddress": "1 Main Street, Springfield"}})
        uid = get(cp, "campaign", "ledgered", TENANT_NS)["metadata"]["uid"]
        elsewhere = str(uuid.uuid4())  # a campaign of another tenant in the same shared ledger
        ledger = open_ledger(postgres_url)
        ledger.claim(uid, [claim(ann, uid, 2), claim(bob, uid, 3)])
        ledger.claim(elsewhere, [claim(ann, elsewhere, 2)])

        apply(cp, {"apiVersion": "v1", "kind": "Secret",
                   "metadata": {"name": "erase-ann-ledger", "namespace": TENANT_NS,
                                "labels": {REQUEST_LABEL: "gdpr-43"}},
                   "stringData": {"addresses": f"{ann}\n"}})
        done = wait_for(lambda: (s := find(cp, "secret", "erase-ann-ledger", TENANT_NS)) and
                        (s["metadata"].get("annotations") or {}).get(STATUS_ANNOTATION, "").startswith("erased ")
                        and s, timeout=90, what="the erasure request done")
        assert not (done.get("data") or {}).get("addresses")  # the request's own copy of the address is gone
        assert ledger.entry(uid, ann) is None
        assert ledger.entry(uid, bob) is not None and ledger.entry(elsewhere, ann) is not None
        ledger.close()
    finally:
        cp.kubectl("-n", TENANT_NS, "delete", "campaign", "ledgered", "--wait=false", check=False)
        cp.kubectl("-n", TENANT_NS, "delete", "secret", "erase-ann-ledger", "--wait=false", check=False)
        cp.kubectl("-n", NS, "delete", "smtpserver", SERVER, "--wait=false", check=False)
