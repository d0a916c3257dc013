"""Test scenarios: one SmtpServer's DNS inputs under its own sub-domain of example.test."""

from __future__ import annotations

from collections.abc import Sequence

from smtpinfra_api.v1alpha1 import DmarcPolicy, DmarcSpec
from smtpinfra_operator.dns import DkimPublicKey, DnsInputs, Record, SendingIp

from .knot import FORWARD_ZONE, REVERSE_ZONE


def ip(octet: int) -> str:
    return f"127.0.10.{octet}"


def scenario(
    sub: str,
    service: int,
    sending: Sequence[int],
    *,
    dkim: Sequence[DkimPublicKey] = (),
    mta_sts: bool = False,
    owner: str | None = None,
) -> DnsInputs:
    """Server `mail/<sub>`: hostname mta.<sub>.example.test, EHLO out<octet>.<sub>.example.test,
    sender domains <sub>.example.test and news.<sub>.example.test, bounces.<sub>.example.test."""
    base = f"{sub}.{FORWARD_ZONE}"
    return DnsInputs(
        owner=owner or f"mail/{sub}",
        hostname=f"mta.{base}",
        return_path_domain=f"bounces.{base}",
        service_addresses=(ip(service),),
        sending=tuple(SendingIp(ip(o), f"out{o}.{base}") for o in sending),
        sender_domains=(base, f"news.{base}"),
        dkim_keys=tuple(dkim),
        dmarc=DmarcSpec(policy=DmarcPolicy.QUARANTINE, aggregate_report_to=[f"dmarc@{base}"], percent=100),
        mta_sts=mta_sts,
        mta_sts_mode="enforce",
        ttl=60,
        forward_zones=(FORWARD_ZONE,),
        reverse_zones=(REVERSE_ZONE,),
    )


def under(records: Sequence[Record], sub: str) -> list[Record]:
    """Records at names of scenario `sub` (forward names and its PTRs are passed separately)."""
    return [r for r in records if r.name.endswith(f"{sub}.{FORWARD_ZONE}")]
