"""Shared building blocks of the smtpinfra.com API: base model, patterns, conditions.

The pydantic models are the single source of truth for the CRDs. The patterns below are
written for RE2 (Go's regexp, which the API server uses) and for pydantic's Rust regex engine
alike: no look-around, no back-references.
"""

from __future__ import annotations

import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "smtpinfra.com"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "smtpinfra"

# --- patterns -------------------------------------------------------------------------------

_LABEL = r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"
DNS_LABEL_PATTERN = rf"^{_LABEL}$"
# A fully qualified host or domain name: at least two labels, lower case, no trailing dot.
FQDN_PATTERN = rf"^{_LABEL}(\.{_LABEL})+$"
# Kubernetes object names (RFC 1123 subdomain).
OBJECT_NAME_PATTERN = rf"^{_LABEL}(\.{_LABEL})*$"
EMAIL_PATTERN = rf"^[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~.-]{{1,64}}@{_LABEL}(\.{_LABEL})+$"
# Durations such as 30s, 5m, 1h30m, 7d.
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h|d))+$"
# A decimal percentage between 0 and 100 such as "0.3" or "5".
PERCENT_PATTERN = r"^(100(\.0+)?|[0-9]{1,2}(\.[0-9]+)?)$"
# Kubernetes resource quantities (a practical subset: plain, binary and decimal suffixes).
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

Fqdn = Annotated[str, Field(pattern=FQDN_PATTERN, max_length=253)]
DnsLabel = Annotated[str, Field(pattern=DNS_LABEL_PATTERN, max_length=63)]
ObjectName = Annotated[str, Field(pattern=OBJECT_NAME_PATTERN, max_length=253)]
Email = Annotated[str, Field(pattern=EMAIL_PATTERN, max_length=254)]
Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
Percent = Annotated[str, Field(pattern=PERCENT_PATTERN, max_length=12)]
Quantity = Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=32)]

DURATION_UNITS_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``1h30m``; the schema already guarantees the syntax."""
    total = 0.0
    for number, unit in re.findall(r"([0-9]+)(ms|s|m|h|d)", text):
        total += int(number) * DURATION_UNITS_SECONDS[unit]
    return total


_QUANTITY_FACTORS = {"": 1.0, "m": 0.001, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
                     "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50}


def parse_quantity(text: str) -> float:
    """A quantity of QUANTITY_PATTERN as a number ('500m' -> 0.5, '2' -> 2.0, '1Ki' -> 1024.0)."""
    number = text.rstrip("kMGTPmi")
    suffix = text[len(number):]
    if suffix not in _QUANTITY_FACTORS:
        raise ValueError(f"unknown quantity suffix in {text!r}")
    return float(number) * _QUANTITY_FACTORS[suffix]


def cel(rule: str, message: str, *, field_path: str | None = None, reason: str | None = None) -> dict[str, Any]:
    """One ``x-kubernetes-validations`` entry; the message must tell the user what to fix."""
    entry: dict[str, Any] = {"rule": rule, "message": message}
    if field_path:
        entry["fieldPath"] = field_path
    if reason:
        entry["reason"] = reason
    return entry


def immutable(field: str) -> dict[str, Any]:
    """A transition rule that refuses any change of ``field`` once set."""
    return cel("self == oldSelf", f"{field} is immutable; delete and recreate the object to change it")


# --- text written into mail headers ---------------------------------------------------------

#: What text that becomes a mail header may not contain: C0 controls (CR and LF end the header
#: line and would start a new header, TAB folds it, NUL truncates it), DEL, C1 controls, and the
#: Unicode line and paragraph separators, which some mail libraries treat as line ends. RE2
#: syntax, for the CEL rule the API server evaluates.
HEADER_BREAKING_RE2 = r"[\x00-\x1f\x7f-\x9f\x{2028}\x{2029}]"
_HEADER_BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def single_line(field: str) -> dict[str, Any]:
    """Schema extra for a field written into a mail header: ``kubectl apply`` refuses control characters.

    A CEL rule rather than a ``pattern``, so the refusal says what to fix instead of quoting a
    regular expression.
    """
    return {"x-kubernetes-validations": [cel(
        f"!self.matches(r'{HEADER_BREAKING_RE2}')",
        f"{field} must be a single line without control characters (CR, LF, TAB, NUL...): "
        "it is written into a mail header",
    )]}


def refuse_header_breaking(value: str) -> str:
    """The rule of :func:`single_line` for models validated outside the API server."""
    found = _HEADER_BREAKING.search(value)
    if found:
        raise ValueError(f"control character {found.group()!r} at position {found.start()}: "
                         "the text is written into a mail header and must be a single line")
    return value


#: Validator to put next to ``Field(json_schema_extra=single_line(...))``.
HeaderSafe = AfterValidator(refuse_header_breaking)


# --- base model -----------------------------------------------------------------------------


class ApiModel(BaseModel):
    """Base of every API type: camelCase on the wire, field docstrings become descriptions."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        use_attribute_docstrings=True,
        extra="forbid",
        frozen=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset fields omitted."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class StatusModel(ApiModel):
    """Status types tolerate fields written by newer operators instead of failing on them."""

    model_config = ConfigDict(extra="ignore")


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace (or a cluster-scoped object)."""

    name: ObjectName
    """Name of the referenced object."""


class NamespacedObjectReference(ApiModel):
    """A reference to a namespaced object, possibly in another namespace."""

    name: ObjectName
    """Name of the referenced object."""
    namespace: DnsLabel | None = None
    """Namespace of the referenced object; defaults to the referring object's namespace."""


class SecretKeyReference(ApiModel):
    """A key inside a Secret in the referring object's namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: Annotated[str, Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253)]
    """Key inside the Secret's data."""


# --- conditions -----------------------------------------------------------------------------


class ConditionStatus(StrEnum):
    """The three values of a metav1.Condition status."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """A metav1.Condition: the shape kstatus, kubectl wait, Flux and Argo CD read."""

    type: Annotated[str, Field(pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                                       r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$", max_length=316)]
    """Type of the condition in CamelCase, e.g. Ready, Reconciling, Stalled."""
    status: ConditionStatus
    """Whether the condition holds: True, False or Unknown."""
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation the condition was computed from."""
    last_transition_time: datetime
    """When the status last changed from one value to another."""
    reason: Annotated[str, Field(pattern=CONDITION_REASON_PATTERN, min_length=1, max_length=1024)]
    """A programmatic identifier in CamelCase for the reason of the last transition."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """A human readable message with details about the transition."""


CONDITIONS_LIST_SCHEMA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


class CommonStatus(StatusModel):
    """Status fields every kind carries."""

    observed_generation: Annotated[int, Field(ge=0)] | None = None
    """The .metadata.generation the operator last reconciled."""
    conditions: Annotated[list[Condition], Field(json_schema_extra=CONDITIONS_LIST_SCHEMA)] = []
    """Current state: Ready is the summary; Reconciling and Stalled are abnormal-true."""
    kopf: Annotated[dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True,
                                                             "type": "object"})] | None = None
    """Operator bookkeeping (handler progress and the last handled spec); not for users."""


ScopeName = Literal["Namespaced", "Cluster"]
