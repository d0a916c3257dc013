"""Campaign builders (pure): the sender Job per the sender's contract, its RBAC and claim, the template check
against sample rows, the unsubscribe key Secret and its mount, the MTA config of a suspended tenant, metrics."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from smtpinfra_api.v1alpha1 import CampaignSpec, SmtpServerSpec, TenantSpec
from smtpinfra_campaign.templates import validate_templates
from smtpinfra_mta.config import parse_config
from smtpinfra_operator.builders import unsubscribe, workload
from smtpinfra_operator.builders.mtaconfig import ServedTenant, ServerInputs, SourceAddress, replica_config
from smtpinfra_operator.campaigns import job as build
from smtpinfra_operator.campaigns.metrics import CampaignMetrics
from smtpinfra_operator.campaigns.recipients import inline_sample, sample

pytestmark = pytest.mark.operator


def campaign_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "tenant": "acme", "serverRef": {"name": "out", "namespace": "mail"},
        "sender": {"address": "news@acme.example"}, "subject": "Hello {{ first_name }}",
        "templates": {"text": "Hi {{ first_name }}", "html": "<p>{{ first_name }}</p>"},
        "recipients": {"configMapRef": {"name": "list", "key": "rows.csv"}},
        "unsubscribe": {"url": "https://u.acme.example/u", "mailto": "unsubscribe@acme.example"},
        "postalAddress": "1 Main Street, Springfield",
    }
    spec.update(overrides)
    return spec


def campaign(**overrides: Any) -> build.CampaignRef:
    return build.CampaignRef(name="november", namespace="tenant-acme", uid="c-uid",
                             spec=CampaignSpec.model_validate(campaign_spec(**overrides)))


def server(**overrides: Any) -> build.ServerRef:
    spec = {"hostname": "mta.example.test", "ipPools": ["p"], "returnPathDomain": "bounces.example.test",
            "tls": {"secretName": "t"}, **overrides}
    return build.ServerRef("out", "mail", SmtpServerSpec.model_validate(spec))


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_job_runs_the_sender_command_of_the_contract() -> None:
    settings = build.SenderSettings(image="smtp-infra/operator:9.9")
    job = build.desired_job(campaign(), server(), settings)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "smtp-infra/operator:9.9"
    assert container["command"] == ["smtp-infra", "campaign", "send", "--namespace", "tenant-acme", "--name",
                                    "november", "--ledger", "sqlite:////var/lib/smtp-infra/campaign/ledger.db",
                                    "--lease", "campaign-november"]
    env = env_of(job)
    assert env["SMTP_HOST"] == "out-submission.mail.svc" and env["SMTP_PORT"] == "587"
    assert env["SMTP_TLS"] == "starttls"
    assert env["SMTP_TLS_SERVER_NAME"] == "mta.example.test"  # the certificate's name, not the Service's
    assert env["SMTP_USERNAME"] == {"secretKeyRef": {"name": "smtp-credentials", "key": "username"}}
    assert env["SMTP_PASSWORD"] == {"secretKeyRef": {"name": "smtp-credentials", "key": "password"}}
    assert env["SMTP_INFRA_UNSUBSCRIBE_KEY_FILE"] == "/etc/smtp-infra/unsubscribe/unsubscribe-key"
    assert env["SMTP_INFRA_UNSUBSCRIBE_URL"] == "https://u.acme.example/u"
    assert "SMTP_INFRA_LEDGER_DSN" not in env
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert mounts["ledger"] == "/var/lib/smtp-infra/campaign"
    assert volumes["ledger"]["persistentVolumeClaim"]["claimName"] == build.resource_name("november")
    assert volumes["unsubscribe"]["secret"]["secretName"] == build.resource_name("november")


def test_job_is_owned_by_the_campaign_and_fails_at_once_on_bad_input() -> None:
    job = build.desired_job(campaign(), server(), build.SenderSettings(), suspend=True)
    assert job["metadata"]["ownerReferences"] == [{"apiVersion": "smtpinfra.com/v1alpha1", "kind": "Campaign",
                                                   "name": "november", "uid": "c-uid", "controller": True,
                                                   "blockOwnerDeletion": True}]
    assert job["metadata"]["namespace"] == "tenant-acme"
    spec = job["spec"]
    assert spec["suspend"] is True and spec["backoffLimit"] == build.BACKOFF_LIMIT
    assert spec["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    fail = spec["podFailurePolicy"]["rules"][0]
    assert fail["action"] == "FailJob" and fail["onExitCodes"]["values"] == [2]
    assert spec["template"]["spec"]["serviceAccountName"] == build.resource_name("november")
    assert spec["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
    assert build.desired_job(campaign(), server(), build.SenderSettings())["spec"]["suspend"] is False


def test_postgresql_ledger_comes_from_the_secret_and_needs_no_claim() -> None:
    settings = build.SenderSettings(ledger_dsn="postgresql://u:p@db/ledger")
    objects = build.desired_objects(campaign(), server(), settings, "k" * 64)
    kinds = [o["kind"] for o in objects]
    assert kinds == ["ServiceAccount", "Role", "RoleBinding", "Secret", "Job"]
    job = objects[-1]
    assert env_of(job)["SMTP_INFRA_LEDGER_DSN"] == {"secretKeyRef": {"name": build.resource_name("november"),
                                                                     "key": "ledger-dsn"}}
    assert "$(SMTP_INFRA_LEDGER_DSN)" in job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert objects[3]["stringData"] == {"unsubscribe-key": "k" * 64, "ledger-dsn": "postgresql://u:p@db/ledger"}


def test_sqlite_ledger_gets_a_claim_owned_by_the_campaign() -> None:
    objects = build.desired_objects(campaign(), server(), build.SenderSettings(ledger_size="5Gi"), "k")
    claim = next(o for o in objects if o["kind"] == "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "c-uid"
    assert [o["kind"] for o in objects][-1] == "Job"


def test_sender_trusts_the_ca_of_the_servers_tls_secret() -> None:
    ca, leaf = base64.b64encode(b"CA PEM").decode(), base64.b64encode(b"LEAF PEM").decode()
    assert build.tls_ca({"data": {"ca.crt": ca, "tls.crt": leaf}}) == "CA PEM"
    assert build.tls_ca({"data": {"tls.crt": leaf}}) == "LEAF PEM"  # self-signed: its own anchor
    assert build.tls_ca(None) is None
    assert build.tls_secret_name(server()) == "t"
    assert build.tls_secret_name(server(tls={"issuerRef": {"name": "le"}})) == "out-tls"
    objects = build.desired_objects(campaign(), server(), build.SenderSettings(), "k", ca_pem="CA PEM")
    secret, job = objects[3], objects[-1]
    assert secret["stringData"]["tls-ca.crt"] == "CA PEM"
    assert env_of(job)["SMTP_TLS_CA_FILE"] == "/etc/smtp-infra/tls-ca/tls-ca.crt"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "tls-ca", "mountPath": "/etc/smtp-infra/tls-ca", "readOnly": True} in container["volumeMounts"]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls-ca"]["secret"] == {"secretName": build.resource_name("november"),
                                           "items": [{"key": "tls-ca.crt", "path": "tls-ca.crt"}]}
    assert "SMTP_TLS_CA_FILE" not in env_of(build.desired_job(campaign(), server(), build.SenderSettings()))


def test_recipients_file_claim_is_mounted_where_the_sender_reads_it() -> None:
    spec = campaign(recipients={"file": {"claimName": "lists", "path": "november.csv"}})
    job = build.desired_job(spec, server(), build.SenderSettings())
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "recipients", "mountPath": "/var/lib/smtp-infra/recipients",
            "readOnly": True} in container["volumeMounts"]
    volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    assert volumes["recipients"]["persistentVolumeClaim"] == {"claimName": "lists", "readOnly": True}
    plain = build.desired_job(campaign(), server(), build.SenderSettings())
    assert "recipients" not in {v["name"] for v in plain["spec"]["template"]["spec"]["volumes"]}


def test_implicit_tls_when_submission_is_off() -> None:
    host, port, tls = build.submission_endpoint(server(listeners={"submission": {"enabled": False},
                                                                  "implicitTls": {"enabled": True}}))
    assert (host, port, tls) == ("out-submission.mail.svc", 465, "implicit")


def test_role_grants_only_what_the_sender_reads() -> None:
    rules = build.role(campaign())["rules"]
    by_resource = {(r["resources"][0], tuple(r.get("resourceNames", ()))): set(r["verbs"]) for r in rules}
    assert by_resource[("configmaps", ("list",))] == {"get"}
    assert by_resource[("leases", ("campaign-november",))] >= {"get", "update"}
    assert by_resource[("campaigns", ())] == {"get", "list", "watch"}
    assert not any(r["resources"] == ["secrets"] for r in rules)  # no Secret: the list is in a ConfigMap
    secret_list = campaign(recipients={"secretRef": {"name": "private", "key": "rows"}})
    assert {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["private"], "verbs": ["get"]} in \
        build.role(secret_list)["rules"]
    binding = build.role_binding(campaign())
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": build.resource_name("november"),
                                    "namespace": "tenant-acme"}]


def test_tenant_reader_lets_the_namespace_read_only_its_tenant() -> None:
    role, binding = build.tenant_reader("acme", "t-uid", "tenant-acme")
    assert role["rules"] == [{"apiGroups": ["smtpinfra.com"], "resources": ["tenants"], "resourceNames": ["acme"],
                              "verbs": ["get", "list", "watch"]}]
    assert binding["subjects"][0]["name"] == "system:serviceaccounts:tenant-acme"
    assert role["metadata"]["ownerReferences"][0]["kind"] == "Tenant"


def test_long_names_fit_a_job_label() -> None:
    name = "n" * 200
    assert len(build.job_name(name)) <= 63 and build.job_name(name) != build.job_name("n" * 199)
    assert len(build.label_value(name)) <= 63
    assert build.lease_name(name) == f"campaign-{name}"  # the contract's name, whatever its length


def test_templates_render_against_the_sample_rows() -> None:
    spec = CampaignSpec.model_validate(campaign_spec())
    rows = sample("email,first_name\na@x.test,Ann\nb@x.test,Bob\n").rows
    assert validate_templates(spec, rows) is None
    missing = sample("email,last_name\na@x.test,Smith\n").rows
    error = validate_templates(spec, missing)
    assert error is not None and "'first_name' is undefined" in error and "recipient 1 (a@x.test)" in error


@pytest.mark.parametrize(("templates", "expected"), [
    ({"text": "Hi {{ first_name }"}, "spec.templates.text line 1"),
    ({"html": "{{ ''.__class__.__mro__ }}"}, "recipient 1 (a@x.test): spec.templates.html"),
    ({"text": "{{ first_name.upper.__globals__ }}"}, "recipient 1 (a@x.test): spec.templates.text"),
])
def test_template_errors_are_precise(templates: dict[str, str], expected: str) -> None:
    spec = CampaignSpec.model_validate(campaign_spec(templates=templates))
    error = validate_templates(spec, [{"email": "a@x.test", "first_name": "Ann"}])
    assert error is not None and error.startswith(expected), error


def test_subject_rendering_a_line_break_is_refused() -> None:
    spec = CampaignSpec.model_validate(campaign_spec(subject="Hi {{ first_name }}"))
    error = validate_templates(spec, [{"email": "a@x.test", "first_name": "Ann\r\nBcc: x@evil.test"}])
    assert error is not None and "not a single line" in error


def test_sample_reads_csv_and_json_lines_and_reports_bad_rows() -> None:
    csv = sample("email,name\n,nobody\na@x.test,Ann,extra\nb@x.test,Bob\n")
    assert csv.rows == [{"email": "b@x.test", "name": "Bob"}]
    assert csv.problems == ["row 1: no email", "row 2: more fields than the header names"]
    lines = sample('{"email": "a@x.test", "n": 1}\nnot json\n[1]\n{"email": "b@x.test"}\n', limit=2)
    assert [r["email"] for r in lines.rows] == ["a@x.test", "b@x.test"]
    assert lines.problems[0].startswith("row 2: not JSON") and lines.problems[1] == "row 3: not a JSON object"
    assert sample("name\nAnn\n").problems == ["the CSV header has no 'email' column (columns: name)"]
    assert inline_sample(["a@x.test"]).rows == [{"email": "a@x.test"}]


def test_unsubscribe_key_secret_is_mounted_in_the_mta_pods() -> None:
    owner = workload.Owner(name="out", namespace="mail", uid="s-uid")
    secret = unsubscribe.secret(owner, workload.labels("out"), unsubscribe.new_key())
    assert secret["metadata"]["name"] == "out-unsubscribe" and len(secret["stringData"]["key"]) == 64
    assert len(secret["stringData"]["erasure-salt"]) == 64
    assert secret["stringData"]["erasure-salt"] != secret["stringData"]["key"]
    assert secret["metadata"]["ownerReferences"] == [owner.reference()]
    sts = workload.statefulset(owner, server().spec, 1, "smtp-infra/mta:0.1.0", "t")
    pod = sts["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "unsubscribe")
    assert volume["secret"]["secretName"] == "out-unsubscribe"
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "unsubscribe")
    assert mount["mountPath"] == str(unsubscribe.UNSUBSCRIBE_DIR) and mount["readOnly"]


def test_a_tenant_suspended_for_its_rates_is_suspended_in_the_mta_config() -> None:
    tspec = TenantSpec.model_validate({"displayName": "A", "senderDomains": ["acme.example"]})
    inputs = ServerInputs(name="out", namespace="mail", spec=server().spec,
                          tenants=[ServedTenant("acme", tspec, "p", suspended_reason="complaint rate 1.00%"),
                                   ServedTenant("other", tspec.model_copy(update={"sender_domains": ["o.example"]}),
                                                "p")],
                          replica_addresses={0: [SourceAddress(pool="p", address="127.0.0.9", ehlo_name="m")]})
    config = parse_config(replica_config(inputs, 0).model_dump(mode="json"))
    tenants = {t.name: t for t in config.tenants}
    assert tenants["acme"].suspended and not tenants["other"].suspended
    assert tenants["acme"].suspended_reason == "complaint rate 1.00%"  # the MTA quotes it in its 550
    assert tenants["other"].suspended_reason == ""
    assert tenants["acme"].suspension_window == 86400
    assert [str(k) for k in config.unsubscribe.keys] == ["/etc/smtp-infra/unsubscribe/key"]
    assert str(config.unsubscribe.erasure_salt_file) == "/etc/smtp-infra/unsubscribe/erasure-salt"


def test_metrics_register_on_the_given_registry() -> None:
    registry = CollectorRegistry()
    metrics = CampaignMetrics(registry)
    metrics.observe_campaign("tenant-acme", "november", {"delivered": 3, "deferred": 1})
    metrics.observe_tenant("acme", True)
    value = registry.get_sample_value
    assert value("smtpinfra_operator_campaign_recipients",
                 {"namespace": "tenant-acme", "campaign": "november", "outcome": "delivered"}) == 3
    assert value("smtpinfra_operator_tenant_suspended", {"tenant": "acme"}) == 1
    metrics.forget_campaign("tenant-acme", "november", ["delivered", "deferred"])
    assert value("smtpinfra_operator_campaign_recipients",
                 {"namespace": "tenant-acme", "campaign": "november", "outcome": "delivered"}) is None


def test_erasure_request_secret_is_read_and_emptied_only_when_every_pod_confirmed() -> None:
    import base64

    from smtpinfra_operator.campaigns.erasure import ErasureReport, erase_request, request_patch, requested_addresses

    raw = base64.b64encode(b"ann@x.test\n\nbob@x.test\nann@x.test\nnot an address\n").decode()
    assert requested_addresses({"data": {"addresses": raw}}) == ["ann@x.test", "bob@x.test"]
    assert requested_addresses({"data": {}}) == []
    assert erase_request("acme", " ann@x.test ") == b'{"tenant": "acme", "address": "ann@x.test"}'
    done = request_patch([ErasureReport(erased=["m/a-0", "m/a-1"])], "T")
    assert done == {"metadata": {"annotations": {"smtpinfra.com/erasure-status": "erased T"}},
                    "data": {"addresses": None}}
    partial = request_patch([ErasureReport(erased=["m/a-0"], failed={"m/a-1": "unreachable"})], "T")
    assert "data" not in partial  # the addresses stay until every pod erased them
    assert partial["metadata"]["annotations"]["smtpinfra.com/erasure-status"] == "pending T: not confirmed by m/a-1"
    assert "data" not in request_patch([ErasureReport()], "T")  # no pod at all confirmed nothing


def test_ledger_erasure_job_reads_the_request_secret_and_mounts_the_campaign_ledger() -> None:
    from smtpinfra_operator.campaigns.erasure import job_outcome, request_digest

    campaign = {"metadata": {"name": "november", "namespace": "tenant-acme", "uid": "u-1"}}
    secret = {"metadata": {"name": "gdpr-7", "namespace": "tenant-acme", "uid": "s-1"},
              "data": {"addresses": "YW5uQHgudGVzdAo="}}
    digest = request_digest(secret)
    assert digest != request_digest({**secret, "metadata": {**secret["metadata"], "uid": "s-2"}})
    assert digest != request_digest({**secret, "data": {"addresses": "Ym9iQHgudGVzdAo="}})
    job = build.ledger_erasure_job(campaign, build.SenderSettings(image="smtp-infra/operator:t"), "gdpr-7",
                                   "addresses", digest)
    assert job["metadata"]["name"] == build.erasure_job_name("november", digest)
    assert job["metadata"]["labels"][build.ERASURE_LABEL] == digest[:63]
    assert job["metadata"]["labels"]["app.kubernetes.io/component"] != build.COMPONENT  # not seen as a sender
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    pod = job["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    container = pod["containers"][0]
    assert container["command"] == ["smtp-infra", "campaign", "erase-ledger", "--campaign", "u-1", "--ledger",
                                    build.LEDGER_URL, "--addresses-file", "/etc/smtp-infra/erasure/addresses"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["ledger"]["persistentVolumeClaim"]["claimName"] == build.resource_name("november")
    assert volumes["request"]["secret"] == {"secretName": "gdpr-7", "items": [{"key": "addresses",
                                                                               "path": "addresses"}]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"ledger": str(build.LEDGER_DIR), "request": "/etc/smtp-infra/erasure"}

    assert job_outcome({}) == "Running"
    assert job_outcome({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "Complete"
    assert job_outcome({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "Failed"
    assert job_outcome({"status": {"conditions": [{"type": "Complete", "status": "False"}]}}) == "Running"
