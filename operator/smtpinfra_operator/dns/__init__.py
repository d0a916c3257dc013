"""DNS records of an SmtpServer: build (pure), own, publish (RFC 2136 / external-dns), verify.

Typical use from a handler::

    inputs = inputs_from_spec(owner, spec, sending=..., sender_domains=..., dkim_keys=...)
    records = build_records(inputs)
    provider = Rfc2136Provider(server, zones, key_name=..., secret=..., port=...)
    result = await asyncio.to_thread(sync, provider, owner, records)   # result.plan.conflicts
    checks = await asyncio.to_thread(verify, records, [f"{server}:{port}"])
"""

from .externaldns import build_dns_endpoint, dns_endpoint_name
from .ownership import Conflict, Plan, owner_record, owner_record_name, owner_text, plan_changes
from .provider import (
    DnsConcurrentChange,
    DnsProvider,
    DnsProviderError,
    DnsRejected,
    DnsUnavailable,
    SyncResult,
    remove_owned,
    sync,
)
from .records import (
    DkimPublicKey,
    DnsInputs,
    Record,
    RecordError,
    SendingIp,
    build_records,
    desired_diff,
    dkim_text,
    dmarc_text,
    inputs_from_spec,
    mta_sts_policy,
    mta_sts_policy_id,
    mta_sts_policy_text,
    spf_text,
    spki_kind,
    split_records,
    txt_value,
    unmanaged_records,
)
from .rfc2136 import Rfc2136Provider
from .verify import FcrdnsResult, VerifyResult, VerifyState, fcrdns, verify

__all__ = [
    "Conflict",
    "DkimPublicKey",
    "DnsConcurrentChange",
    "DnsInputs",
    "DnsProvider",
    "DnsProviderError",
    "DnsRejected",
    "DnsUnavailable",
    "FcrdnsResult",
    "Plan",
    "Record",
    "RecordError",
    "Rfc2136Provider",
    "SendingIp",
    "SyncResult",
    "VerifyResult",
    "VerifyState",
    "build_dns_endpoint",
    "build_records",
    "desired_diff",
    "dkim_text",
    "dmarc_text",
    "dns_endpoint_name",
    "fcrdns",
    "inputs_from_spec",
    "mta_sts_policy",
    "mta_sts_policy_id",
    "mta_sts_policy_text",
    "owner_record",
    "owner_record_name",
    "owner_text",
    "plan_changes",
    "remove_owned",
    "spf_text",
    "spki_kind",
    "split_records",
    "sync",
    "txt_value",
    "unmanaged_records",
    "verify",
]
