"""Campaign: a bulk send by a tenant (sender, templates, recipients, rate, unsubscribe)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import Field

from ..meta import (
    ApiModel,
    CommonStatus,
    Email,
    HeaderSafe,
    NamespacedObjectReference,
    ObjectName,
    SecretKeyReference,
    StatusModel,
    cel,
    single_line,
)
from .common import SET_LIST
from .kind import AGE_COLUMN, Kind, PrinterColumn, ready_columns

#: An https URI of RFC 3986 characters only: no space, control character, quote or angle bracket
#: that could end the List-Unsubscribe header's <...> or the header itself.
HTTPS_URI_PATTERN = r"^https://[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%-]+$"


class Sender(ApiModel):
    """The From header of the campaign."""

    address: Email
    """Sender address; its domain must be one of the tenant's sender domains."""
    name: Annotated[str, Field(max_length=256, json_schema_extra=single_line("spec.sender.name")),
                    HeaderSafe] | None = None
    """Display name in the From header; one line, no control characters."""


class Templates(ApiModel):
    """Message bodies as Jinja2 templates; recipient fields are available as variables."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("has(self.text) || has(self.html)", "spec.templates: set text, html or both"),
            ]
        }
    }

    text: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None
    """text/plain body template."""
    html: Annotated[str, Field(min_length=1, max_length=1_000_000)] | None = None
    """text/html body template."""


class ConfigMapKeyReference(ApiModel):
    """A key in a ConfigMap in the campaign's namespace."""

    name: ObjectName
    """Name of the ConfigMap."""
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
    """Key holding the recipients as CSV with an `email` column."""


class RecipientsFormat(StrEnum):
    """How a recipient list is written."""

    CSV = "csv"
    """Comma-separated values; the header row names the variables and has one `email` column."""
    JSONL = "jsonl"
    """JSON lines: one object per line with an `email` key; the other keys are variables."""


#: A path inside the recipients volume: relative, no `..` segment, no leading slash.
RECIPIENTS_PATH_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9._-]*(/[A-Za-z0-9_][A-Za-z0-9._-]*)*$"


class RecipientsFile(ApiModel):
    """A list on a PersistentVolumeClaim, for lists too large for a ConfigMap (1 MiB)."""

    claim_name: ObjectName
    """PersistentVolumeClaim in the campaign's namespace; mounted read-only at /var/lib/smtp-infra/recipients/."""
    path: Annotated[str, Field(pattern=RECIPIENTS_PATH_PATTERN, max_length=1024)]
    """Path of the list inside the claim, relative (e.g. lists/november.csv)."""


class Recipients(ApiModel):
    """Where the recipient list comes from."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "[has(self.inline), has(self.configMapRef), has(self.secretRef), has(self.file)]"
                    ".filter(x, x).size() == 1",
                    "spec.recipients: set exactly one of inline, configMapRef, secretRef or file",
                ),
            ]
        }
    }

    inline: Annotated[list[Email], Field(min_length=1, max_length=1000, json_schema_extra=SET_LIST)] | None = None
    """A short list of addresses, for tests and small sends."""
    config_map_ref: ConfigMapKeyReference | None = None
    """A CSV in a ConfigMap."""
    secret_ref: SecretKeyReference | None = None
    """A CSV in a Secret (for lists that are personal data)."""
    file: RecipientsFile | None = None
    """A file on a PersistentVolumeClaim (large lists)."""
    format: RecipientsFormat = RecipientsFormat.CSV
    """Format of a configMapRef, secretRef or file list: csv or jsonl."""


class Unsubscribe(ApiModel):
    """List-Unsubscribe headers (RFC 2369) and one-click unsubscribe (RFC 8058)."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "!self.enabled || has(self.url) || has(self.mailto)",
                    "spec.unsubscribe: set url or mailto when unsubscribe is enabled",
                ),
                cel(
                    "!self.enabled || !self.oneClick || has(self.url)",
                    "spec.unsubscribe.url is required for oneClick (RFC 8058 needs an https URL)",
                ),
                cel(
                    "self.enabled && has(self.mailto)",
                    "spec.unsubscribe.mailto is required and unsubscribe must stay enabled: every campaign "
                    "message carries List-Unsubscribe with an https link and a mailto (Gmail/Yahoo bulk rules)",
                ),
            ]
        }
    }

    enabled: bool = True
    """Add List-Unsubscribe headers; bulk senders to Gmail and Yahoo must."""
    url: Annotated[str, Field(pattern=HTTPS_URI_PATTERN, max_length=2048)] | None = None
    """https URL that unsubscribes (the MTA adds a per-recipient token); URI characters only (RFC 3986)."""
    mailto: Email | None = None
    """Address that receives unsubscribe requests."""
    one_click: bool = True
    """Add List-Unsubscribe-Post: List-Unsubscribe=One-Click (RFC 8058)."""


class RateSpec(ApiModel):
    """Submission rate of the campaign."""

    messages_per_minute: Annotated[int, Field(ge=1, le=1_000_000)] = 600
    """Messages submitted per minute."""


class CampaignSpec(ApiModel):
    """A bulk send."""

    model_config = {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.tenant == oldSelf.tenant", "spec.tenant is immutable", field_path=".tenant"),
                cel(
                    "self.serverRef == oldSelf.serverRef",
                    "spec.serverRef is immutable; create a new Campaign to send through another server",
                    field_path=".serverRef",
                ),
            ]
        }
    }

    tenant: ObjectName
    """The Tenant sending the campaign; must own the campaign's namespace. Immutable."""
    server_ref: NamespacedObjectReference
    """The SmtpServer that sends the campaign. Immutable."""
    sender: Sender
    """The From header."""
    reply_to: Email | None = None
    """Reply-To address."""
    subject: Annotated[str, Field(min_length=1, max_length=998, json_schema_extra=single_line("spec.subject")),
                       HeaderSafe]
    """Subject template; one line, no control characters."""
    templates: Templates
    """Body templates."""
    recipients: Recipients
    """The recipient list."""
    start_time: datetime | None = None
    """When to start; immediately when unset."""
    rate: RateSpec = RateSpec()
    """Submission rate."""
    unsubscribe: Unsubscribe
    """Unsubscribe headers; required: every campaign message offers an https one-click link and a mailto."""
    postal_address: Annotated[str, Field(min_length=5, max_length=512)]
    """The sender's physical postal address, required in bulk mail (CAN-SPAM)."""
    suspend: bool = False
    """Pause submission; resume by setting it back to false."""


# --- status (written only by the Campaign controller, smtpinfra_operator.campaigns) ---------------


class CampaignPhase(StrEnum):
    """Lifecycle phase of a campaign."""

    PENDING = "Pending"
    SCHEDULED = "Scheduled"
    SENDING = "Sending"
    PAUSED = "Paused"
    COMPLETED = "Completed"
    FAILED = "Failed"


class CampaignCounters(StatusModel):
    """Recipients of the campaign by outcome (from the sender's progress and the MTAs' per-campaign stats)."""

    total: Annotated[int, Field(ge=0)] = 0
    """Rows in the recipient list (valid or not)."""
    sent: Annotated[int, Field(ge=0)] = 0
    """Submitted to the MTA and acknowledged with 250."""
    delivered: Annotated[int, Field(ge=0)] = 0
    """Accepted by the remote MX."""
    deferred: Annotated[int, Field(ge=0)] = 0
    """Temporarily refused and still queued for a retry."""
    bounced: Annotated[int, Field(ge=0)] = 0
    """Permanently refused."""
    complained: Annotated[int, Field(ge=0)] = 0
    """Reported as spam by the recipient."""
    unsubscribed: Annotated[int, Field(ge=0)] = 0
    """Unsubscribed through the campaign's headers."""
    suppressed: Annotated[int, Field(ge=0)] = 0
    """Not sent because the recipient is on the suppression list."""
    invalid: Annotated[int, Field(ge=0)] = 0
    """Malformed rows, skipped."""
    failed: Annotated[int, Field(ge=0)] = 0
    """Given up: refused at submission, or expired in the MTA's queue."""


class InvalidRow(StatusModel):
    """A malformed recipient row."""

    row: Annotated[int, Field(ge=0)]
    """Row number in the list (1 is the first data row)."""
    reason: Annotated[str, Field(max_length=512)]
    """What is wrong with it."""


class CampaignStatus(CommonStatus):
    """Observed state of a campaign."""

    phase: CampaignPhase | None = None
    """Lifecycle phase."""
    counters: CampaignCounters | None = None
    """Recipients by outcome."""
    progress: Annotated[str, Field(max_length=8)] | None = None
    """Recipients with a final outcome, in percent of the total (e.g. 42%)."""
    job_name: Annotated[str, Field(max_length=253)] | None = None
    """The Job that submits the messages."""
    started_at: datetime | None = None
    """When the sender Job was created."""
    completed_at: datetime | None = None
    """When every recipient had a final outcome (or the campaign failed)."""
    invalid_rows: Annotated[list[InvalidRow], Field(max_length=20)] | None = None
    """The first malformed rows the sender skipped."""


class Campaign(Kind):
    kind = "Campaign"
    plural = "campaigns"
    short_names = ["cmp"]
    scope = "Namespaced"
    spec_model = CampaignSpec
    status_model = CampaignStatus
    description = "A bulk send by a tenant: templates, recipients, rate and unsubscribe settings."
    columns = [
        PrinterColumn(name="Tenant", type="string", json_path=".spec.tenant", description="Tenant"),
        PrinterColumn(name="Phase", type="string", json_path=".status.phase", description="Lifecycle phase"),
        PrinterColumn(name="Progress", type="string", json_path=".status.progress",
                      description="Recipients with a final outcome"),
        PrinterColumn(name="Sent", type="integer", json_path=".status.counters.sent", description="Sent"),
        PrinterColumn(name="Bounced", type="integer", json_path=".status.counters.bounced", priority=1,
                      description="Bounced"),
        *ready_columns(),
        AGE_COLUMN,
    ]
