"""A Campaign → the objects its sender runs with (pure functions, plain dicts).

Everything lives in the campaign's namespace and is owned by the Campaign, so deleting the
Campaign deletes the Job (and its running pod: the sender stops), the Secret, the ledger's
PersistentVolumeClaim and the sender's RBAC. The command line, environment, Lease and paths are
the sender's contract (``smtp-infra campaign send``).

The only object outside the namespace is a ClusterRole + ClusterRoleBinding per tenant that lets
the ServiceAccounts of the tenant's namespace read their own Tenant (a cluster-scoped object a
Role cannot grant); it is owned by the Tenant.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import PurePosixPath
from typing import Any

from smtpinfra_api.meta import API_VERSION, GROUP
from smtpinfra_api.v1alpha1 import CampaignSpec, SmtpServerSpec

from ..builders.tenant import CREDENTIALS_SECRET
from ..builders.workload import submission_service_name

LEDGER_DIR = PurePosixPath("/var/lib/smtp-infra/campaign")
LEDGER_URL = f"sqlite:///{LEDGER_DIR}/ledger.db"
"""The embedded ledger on the Job's PersistentVolumeClaim (the sender's default)."""
UNSUBSCRIBE_DIR = PurePosixPath("/etc/smtp-infra/unsubscribe")
UNSUBSCRIBE_KEY = "unsubscribe-key"
LEDGER_DSN_KEY = "ledger-dsn"
TLS_CA_DIR = PurePosixPath("/etc/smtp-infra/tls-ca")
TLS_CA_KEY = "tls-ca.crt"
"""The server's CA (its TLS Secret's ca.crt, else tls.crt) copied into the sender's Secret."""
RECIPIENTS_DIR = PurePosixPath("/var/lib/smtp-infra/recipients")
"""Where a `spec.recipients.file` claim is mounted (the sender's contract)."""
BAD_INPUT_EXIT_CODE = 2
"""The sender's exit code for input that stops the campaign (e.g. a template error): no retry."""
BACKOFF_LIMIT = 10
"""Pod crashes retried before the Job fails; the ledger makes every restart safe."""
SENDER_UID = 65532
"""The operator image's user."""
CONTAINER = "sender"
CAMPAIGN_LABEL = "smtpinfra.com/campaign"
COMPONENT = "campaign-sender"
MANAGED_BY = "smtp-infra-operator"
DEFAULT_LEDGER_SIZE = "1Gi"


def _default_image() -> str:
    try:
        return f"smtp-infra/operator:{version('smtp-infra')}"
    except PackageNotFoundError:  # running from a source tree without metadata
        return "smtp-infra/operator:0.1.0"


@dataclass(frozen=True)
class SenderSettings:
    """Platform settings of every sender Job (from the operator's environment)."""

    image: str = ""
    """The operator image, which carries the sender; default smtp-infra/operator:<version>."""
    ledger_dsn: str | None = None
    """A PostgreSQL DSN for the ledger; unset: SQLite on the Job's PersistentVolumeClaim."""
    ledger_size: str = DEFAULT_LEDGER_SIZE
    storage_class_name: str | None = None

    def sender_image(self) -> str:
        return self.image or _default_image()


@dataclass(frozen=True)
class CampaignRef:
    """The Campaign as the builders need it."""

    name: str
    namespace: str
    uid: str
    spec: CampaignSpec

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> CampaignRef:
        meta = body["metadata"]
        return cls(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""),
                   spec=CampaignSpec.model_validate(body.get("spec") or {}))

    def owner(self) -> dict[str, Any]:
        return {"apiVersion": API_VERSION, "kind": "Campaign", "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


@dataclass(frozen=True)
class ServerRef:
    """The SmtpServer that sends the campaign."""

    name: str
    namespace: str
    spec: SmtpServerSpec


def _short(prefix: str, name: str, limit: int = 63) -> str:
    """`prefix-name`, shortened with a digest when longer than `limit` (Job names end up in labels)."""
    full = f"{prefix}-{name}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{full[:limit - 9].rstrip('-.')}-{digest}"


def job_name(campaign: str) -> str:
    return _short("campaign", campaign)


def lease_name(campaign: str) -> str:
    """The Lease the sender holds while it sends (contract: `campaign-<name>`)."""
    return f"campaign-{campaign}"


def resource_name(campaign: str) -> str:
    """Name of the sender's ServiceAccount, Role, RoleBinding, Secret and ledger claim."""
    return _short("campaign", campaign, 246) + "-sender"


def label_value(campaign: str) -> str:
    return campaign if len(campaign) <= 63 else _short("c", campaign)


def labels(campaign: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": "smtp-infra", "app.kubernetes.io/component": COMPONENT,
            "app.kubernetes.io/managed-by": MANAGED_BY, CAMPAIGN_LABEL: label_value(campaign)}


def _meta(name: str, campaign: CampaignRef) -> dict[str, Any]:
    return {"name": name, "namespace": campaign.namespace, "labels": labels(campaign.name),
            "ownerReferences": [campaign.owner()]}


def submission_endpoint(server: ServerRef) -> tuple[str, int, str]:
    """(host, port, SMTP_TLS) of the server's submission Service: STARTTLS on 587, else implicit TLS."""
    host = f"{submission_service_name(server.name)}.{server.namespace}.svc"
    listeners = server.spec.listeners
    if listeners.submission.enabled:
        return host, listeners.submission.port, "starttls" if server.spec.tls is not None else "none"
    return host, listeners.implicit_tls.port, "implicit"


def tls_secret_name(server: ServerRef) -> str | None:
    """The Secret holding the server's certificate: spec.tls.secretName, or the one cert-manager issues."""
    tls = server.spec.tls
    if tls is None:
        return None
    return tls.secret_name or f"{server.name}-tls"


def tls_ca(secret: Mapping[str, Any] | None) -> str | None:
    """The PEM the sender trusts for the server: the Secret's ca.crt when it has one, else tls.crt.

    A self-signed certificate (no ca.crt) is its own trust anchor; a certificate issued by a CA
    is verified against that CA, as any client of the server would.
    """
    data = (secret or {}).get("data") or {}
    for key in ("ca.crt", "tls.crt"):
        if data.get(key):
            return base64.b64decode(data[key]).decode()
    return None


def sender_secret(campaign: CampaignRef, unsubscribe_key: str, settings: SenderSettings,
                  ca_pem: str | None = None) -> dict[str, Any]:
    """The campaign's unsubscribe sender key, the server's TLS CA (and the ledger DSN) in its namespace.

    A Secret volume cannot reach across namespaces. The sender signs unsubscribe links with a key
    derived for its tenant and namespace (``smtpinfra_campaign.keys``), which the server's MTA pods
    derive again to verify: a tenant reading this Secret can sign links for its own recipients only.
    It verifies the server's certificate against its CA.
    """
    data = {UNSUBSCRIBE_KEY: unsubscribe_key}
    if settings.ledger_dsn:
        data[LEDGER_DSN_KEY] = settings.ledger_dsn
    if ca_pem:
        data[TLS_CA_KEY] = ca_pem
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(resource_name(campaign.name), campaign), "stringData": data}


def ledger_claim(campaign: CampaignRef, settings: SenderSettings) -> dict[str, Any]:
    """The PersistentVolumeClaim of the SQLite ledger; it outlives the Job's pods, not the Campaign."""
    spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": settings.ledger_size}}}
    if settings.storage_class_name:
        spec["storageClassName"] = settings.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(resource_name(campaign.name), campaign), "spec": spec}


def service_account(campaign: CampaignRef) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta(resource_name(campaign.name), campaign)}


def role(campaign: CampaignRef) -> dict[str, Any]:
    """What the sender reads and holds: its Campaign, its recipient source, and its Lease."""
    recipients = campaign.spec.recipients
    rules: list[dict[str, Any]] = [
        {"apiGroups": [GROUP], "resources": ["campaigns"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": [lease_name(campaign.name)], "verbs": ["get", "list", "watch", "update", "patch"]},
    ]
    if recipients.config_map_ref is not None:
        rules.append({"apiGroups": [""], "resources": ["configmaps"],
                      "resourceNames": [recipients.config_map_ref.name], "verbs": ["get"]})
    if recipients.secret_ref is not None:
        rules.append({"apiGroups": [""], "resources": ["secrets"],
                      "resourceNames": [recipients.secret_ref.name], "verbs": ["get"]})
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": _meta(resource_name(campaign.name), campaign), "rules": rules}


def role_binding(campaign: CampaignRef) -> dict[str, Any]:
    name = resource_name(campaign.name)
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": _meta(name, campaign),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": campaign.namespace}]}


def tenant_reader_name(tenant: str) -> str:
    return _short("smtpinfra-tenant-reader", tenant, 253)


def tenant_reader(tenant: str, tenant_uid: str, namespace: str) -> list[dict[str, Any]]:
    """ClusterRole + ClusterRoleBinding: the ServiceAccounts of the tenant's namespace may read their Tenant."""
    name = tenant_reader_name(tenant)
    meta = {"name": name, "labels": {"app.kubernetes.io/name": "smtp-infra", "app.kubernetes.io/managed-by": MANAGED_BY,
                                     "app.kubernetes.io/component": COMPONENT},
            "ownerReferences": [{"apiVersion": API_VERSION, "kind": "Tenant", "name": tenant, "uid": tenant_uid,
                                 "controller": True, "blockOwnerDeletion": True}]}
    return [
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": meta,
         "rules": [{"apiGroups": [GROUP], "resources": ["tenants"], "resourceNames": [tenant],
                    "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": dict(meta),
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
         "subjects": [{"kind": "Group", "apiGroup": "rbac.authorization.k8s.io",
                       "name": f"system:serviceaccounts:{namespace}"}]},
    ]


def command(campaign: CampaignRef, settings: SenderSettings) -> list[str]:
    """`smtp-infra campaign send …` exactly as the sender's contract has it."""
    ledger = "$(SMTP_INFRA_LEDGER_DSN)" if settings.ledger_dsn else LEDGER_URL
    return ["smtp-infra", "campaign", "send", "--namespace", campaign.namespace, "--name", campaign.name,
            "--ledger", ledger, "--lease", lease_name(campaign.name)]


def desired_job(campaign: CampaignRef, server: ServerRef, settings: SenderSettings,
                suspend: bool = False, has_ca: bool = False) -> dict[str, Any]:
    """The sender Job. `suspend` pauses it (Kubernetes stops its pod; the ledger resumes where it stopped).

    Exit code 2 (bad input) fails the Job at once (podFailurePolicy); other crashes start a new pod,
    up to BACKOFF_LIMIT. The tenant's SMTP login comes from its credentials Secret, which lives in
    this namespace (the campaign's namespace is the tenant's). `has_ca`: the sender's Secret holds
    the server's CA (SMTP_TLS_CA_FILE). A `spec.recipients.file` claim is mounted read-only.
    """
    secret = resource_name(campaign.name)
    host, port, tls = submission_endpoint(server)
    unsubscribe_url = campaign.spec.unsubscribe.url or ""
    env: list[dict[str, Any]] = [
        {"name": "SMTP_HOST", "value": host},
        {"name": "SMTP_PORT", "value": str(port)},
        {"name": "SMTP_USERNAME", "valueFrom": {"secretKeyRef": {"name": CREDENTIALS_SECRET, "key": "username"}}},
        {"name": "SMTP_PASSWORD", "valueFrom": {"secretKeyRef": {"name": CREDENTIALS_SECRET, "key": "password"}}},
        {"name": "SMTP_TLS", "value": tls},
        # the certificate names the server (spec.hostname), not the Service the Job connects through
        {"name": "SMTP_TLS_SERVER_NAME", "value": server.spec.hostname},
        {"name": "SMTP_INFRA_UNSUBSCRIBE_KEY_FILE", "value": str(UNSUBSCRIBE_DIR / UNSUBSCRIBE_KEY)},
        {"name": "SMTP_INFRA_UNSUBSCRIBE_URL", "value": unsubscribe_url},
    ]
    if settings.ledger_dsn:
        env.append({"name": "SMTP_INFRA_LEDGER_DSN",
                    "valueFrom": {"secretKeyRef": {"name": secret, "key": LEDGER_DSN_KEY}}})
    mounts: list[dict[str, Any]] = [
        {"name": "unsubscribe", "mountPath": str(UNSUBSCRIBE_DIR), "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    volumes: list[dict[str, Any]] = [
        {"name": "unsubscribe", "secret": {"secretName": secret, "items": [{"key": UNSUBSCRIBE_KEY,
                                                                              "path": UNSUBSCRIBE_KEY}]}},
        {"name": "tmp", "emptyDir": {}},
    ]
    if not settings.ledger_dsn:
        mounts.append({"name": "ledger", "mountPath": str(LEDGER_DIR)})
        volumes.append({"name": "ledger", "persistentVolumeClaim": {"claimName": secret}})
    if has_ca and tls != "none":
        env.append({"name": "SMTP_TLS_CA_FILE", "value": str(TLS_CA_DIR / TLS_CA_KEY)})
        mounts.append({"name": "tls-ca", "mountPath": str(TLS_CA_DIR), "readOnly": True})
        volumes.append({"name": "tls-ca", "secret": {"secretName": secret, "items": [{"key": TLS_CA_KEY,
                                                                                    "path": TLS_CA_KEY}]}})
    source = campaign.spec.recipients.file
    if source is not None:
        mounts.append({"name": "recipients", "mountPath": str(RECIPIENTS_DIR), "readOnly": True})
        volumes.append({"name": "recipients", "persistentVolumeClaim": {"claimName": source.claim_name,
                                                                        "readOnly": True}})
    container = {
        "name": CONTAINER, "image": settings.sender_image(), "command": command(campaign, settings), "env": env,
        "volumeMounts": mounts,
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(job_name(campaign.name), campaign),
        "spec": {
            "suspend": suspend,
            "backoffLimit": BACKOFF_LIMIT,
            "podFailurePolicy": {"rules": [
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": [BAD_INPUT_EXIT_CODE]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
            ]},
            "template": {
                "metadata": {"labels": labels(campaign.name)},
                "spec": {
                    "restartPolicy": "Never",
                    "serviceAccountName": secret,
                    "enableServiceLinks": False,
                    "terminationGracePeriodSeconds": 30,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": SENDER_UID, "runAsGroup": SENDER_UID,
                                        "fsGroup": SENDER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


ERASURE_LABEL = "smtpinfra.com/erasure"
"""On a ledger-erasure Job: the digest of the erasure request it carries out."""
ERASURE_COMPONENT = "campaign-ledger-erasure"
"""Not the sender's component: the Campaign controller's watch of its sender Jobs does not see these."""
ERASURE_DIR = PurePosixPath("/etc/smtp-infra/erasure")
ERASURE_BACKOFF_LIMIT = 3


def erasure_job_name(campaign: str, digest: str) -> str:
    return _short("campaign-erase", f"{campaign}-{digest[:10]}")


def ledger_erasure_job(campaign: Mapping[str, Any], settings: SenderSettings, request_secret: str,
                       address_key: str, digest: str) -> dict[str, Any]:
    """A Job that erases the addresses of an erasure-request Secret from the campaign's SQLite ledger.

    The ledger sits on the campaign's claim, which only a pod mounting it can reach; the addresses
    come from the request Secret itself (same namespace), so they are never copied into another
    object. No API access (no ServiceAccount token); the same image and user as the sender.
    """
    name, uid = campaign["metadata"]["name"], campaign["metadata"]["uid"]
    owner = {"apiVersion": API_VERSION, "kind": "Campaign", "name": name, "uid": uid,
             "controller": False, "blockOwnerDeletion": True}
    meta = {"name": erasure_job_name(name, digest), "namespace": campaign["metadata"]["namespace"],
            "labels": {**labels(name), "app.kubernetes.io/component": ERASURE_COMPONENT,
                       ERASURE_LABEL: digest[:63]},
            "ownerReferences": [owner]}
    container = {
        "name": "erase", "image": settings.sender_image(),
        "command": ["smtp-infra", "campaign", "erase-ledger", "--campaign", uid, "--ledger", LEDGER_URL,
                    "--addresses-file", str(ERASURE_DIR / address_key)],
        "volumeMounts": [{"name": "ledger", "mountPath": str(LEDGER_DIR)},
                         {"name": "request", "mountPath": str(ERASURE_DIR), "readOnly": True}],
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta,
        "spec": {
            "backoffLimit": ERASURE_BACKOFF_LIMIT,
            "template": {
                "metadata": {"labels": meta["labels"]},
                "spec": {
                    "restartPolicy": "Never",
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    # a ReadWriteOnce claim attaches to one node: go where a running sender has it
                    "affinity": {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
                        {"weight": 100, "podAffinityTerm": {
                            "topologyKey": "kubernetes.io/hostname",
                            "labelSelector": {"matchLabels": {CAMPAIGN_LABEL: label_value(name),
                                                              "app.kubernetes.io/component": COMPONENT}}}}]}},
                    "securityContext": {"runAsNonRoot": True, "runAsUser": SENDER_UID, "runAsGroup": SENDER_UID,
                                        "fsGroup": SENDER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
                    "containers": [container],
                    "volumes": [
                        {"name": "ledger", "persistentVolumeClaim": {"claimName": resource_name(name)}},
                        {"name": "request", "secret": {"secretName": request_secret,
                                                       "items": [{"key": address_key, "path": address_key}]}},
                    ],
                },
            },
        },
    }


def desired_objects(campaign: CampaignRef, server: ServerRef, settings: SenderSettings, unsubscribe_key: str,
                    suspend: bool = False, ca_pem: str | None = None) -> list[dict[str, Any]]:
    """Everything the sender needs in the campaign's namespace, the Job last (it needs the rest)."""
    objects = [service_account(campaign), role(campaign), role_binding(campaign),
               sender_secret(campaign, unsubscribe_key, settings, ca_pem)]
    if not settings.ledger_dsn:
        objects.append(ledger_claim(campaign, settings))
    objects.append(desired_job(campaign, server, settings, suspend, has_ca=bool(ca_pem)))
    return objects


def settings_from_env(environ: Mapping[str, str]) -> SenderSettings:
    """SMTP_INFRA_CAMPAIGN_IMAGE, _LEDGER_DSN (PostgreSQL; unset: SQLite on a claim), _LEDGER_SIZE, _STORAGE_CLASS."""
    return SenderSettings(image=environ.get("SMTP_INFRA_CAMPAIGN_IMAGE", ""),
                          ledger_dsn=environ.get("SMTP_INFRA_CAMPAIGN_LEDGER_DSN") or None,
                          ledger_size=environ.get("SMTP_INFRA_CAMPAIGN_LEDGER_SIZE") or DEFAULT_LEDGER_SIZE,
                          storage_class_name=environ.get("SMTP_INFRA_CAMPAIGN_STORAGE_CLASS") or None)
