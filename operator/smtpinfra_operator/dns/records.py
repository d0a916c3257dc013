"""Pure builders: what an SmtpServer needs in DNS, as a sorted list of record sets.

No I/O here. The operator gathers the facts (addresses, tenants' domains, DKIM public keys) into
a `DnsInputs` and gets back `Record`s in canonical presentation form, so that the desired state
compares equal to what a provider reads back and `desired_diff` touches only what changed.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TXT
import dns.reversename

from smtpinfra_api.v1alpha1 import DkimAlgorithm, DmarcPolicy, DmarcSpec

if TYPE_CHECKING:
    from smtpinfra_api.v1alpha1 import SmtpServerSpec

#: RFC 7208 section 4.6.4: at most 10 terms that cause DNS lookups.
SPF_MAX_LOOKUPS = 10
#: RFC 7208 section 3.4: keep the record small enough for a 512-byte UDP answer.
SPF_MAX_BYTES = 512
#: RFC 1035: one character-string holds at most 255 bytes.
TXT_CHUNK = 255
#: RFC 8461 section 3.2: max_age of the policy; a week is the common choice.
MTA_STS_MAX_AGE = 604800

_SPF_LOOKUP_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})


class RecordError(ValueError):
    """A record that must not be published (too large, too many lookups, bad key)."""


# --------------------------------------------------------------------------------- the record


def normalize_name(name: str) -> str:
    """Lower-case FQDN without the trailing dot: the one spelling used for comparisons."""
    return name.strip().rstrip(".").lower()


@functools.lru_cache(maxsize=8192)
def _canonical_value(rtype: str, value: str) -> str:
    """A value in dnspython's presentation format (cached: every reconcile rebuilds the same
    records, and parsing them again was most of a server's DNS work)."""
    rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), value, origin=dns.name.root,
                             relativize=False)
    text = rd.to_text()
    return text if rtype == "TXT" else text.lower()


@dataclass(frozen=True, order=True)
class Record:
    """One record set: every value of one (name, type), in DNS presentation format.

    Values are canonicalised through dnspython (TXT as quoted character-strings, host names
    absolute with a trailing dot) and sorted, so records built here and records read back from
    a server compare equal when the DNS data is equal.
    """

    name: str
    rtype: str
    ttl: int
    values: tuple[str, ...]

    def __post_init__(self) -> None:
        rtype = self.rtype.upper()
        object.__setattr__(self, "name", normalize_name(self.name))
        object.__setattr__(self, "rtype", rtype)
        object.__setattr__(self, "values", tuple(sorted({_canonical_value(rtype, v) for v in self.values})))

    @property
    def key(self) -> tuple[str, str]:
        """Identity of the record set: (name, type)."""
        return (self.name, self.rtype)

    def texts(self) -> list[str]:
        """TXT values with their character-strings joined (what SPF/DKIM/DMARC parsers read)."""
        out = []
        for v in self.values:
            rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.TXT, v)
            out.append(b"".join(rd.strings).decode())  # type: ignore[attr-defined]
        return out

    def targets(self) -> list[str]:
        """Values in the form external-dns and humans expect (TXT joined, no trailing dots)."""
        if self.rtype == "TXT":
            return self.texts()
        return [v.rstrip(".") if self.rtype in ("PTR", "CNAME") else v for v in self.values]


@functools.lru_cache(maxsize=4096)
def txt_value(text: str) -> str:
    """One TXT rdata holding `text`, split into character-strings of at most 255 bytes."""
    raw = text.encode()
    chunks = [raw[i:i + TXT_CHUNK] for i in range(0, len(raw), TXT_CHUNK)] or [b""]
    return dns.rdtypes.ANY.TXT.TXT(dns.rdataclass.IN, dns.rdatatype.TXT, chunks).to_text()


def in_zone(name: str, zone: str) -> bool:
    """Whether `name` is `zone` itself or below it."""
    name, zone = normalize_name(name), normalize_name(zone)
    return name == zone or name.endswith("." + zone)


def zone_of(name: str, zones: Iterable[str]) -> str | None:
    """The most specific of `zones` that contains `name`."""
    matches = [normalize_name(z) for z in zones if in_zone(name, z)]
    return max(matches, key=len) if matches else None


def reverse_name(address: str) -> str:
    """The in-addr.arpa / ip6.arpa name of an address."""
    return normalize_name(dns.reversename.from_address(address).to_text())


# ---------------------------------------------------------------------------------- the inputs


@dataclass(frozen=True)
class SendingIp:
    """A sending address of one replica and the EHLO name it greets with (its PTR target)."""

    address: str
    ehlo_name: str


@dataclass(frozen=True)
class DkimPublicKey:
    """A DKIM key to publish at <selector>._domainkey.<domain>.

    `key` is the public key as SubjectPublicKeyInfo DER (the operator derives it from the
    Secret's `private.pem` with `smtpinfra_operator.dkimkeys`).
    """

    domain: str
    selector: str
    key: bytes
    algorithm: DkimAlgorithm = DkimAlgorithm.RSA_SHA256


@dataclass(frozen=True)
class DnsInputs:
    """Everything the DNS records of one SmtpServer depend on, gathered by the operator."""

    owner: str
    """"namespace/name" of the SmtpServer; recorded in the ownership TXT records."""
    hostname: str
    """The MTA host name (banner, certificate, A/AAAA, MX target by default)."""
    return_path_domain: str
    """Envelope-sender domain: gets SPF, MX (bounces come back here) and MTA-STS."""
    service_addresses: tuple[str, ...] = ()
    """Externally reachable addresses of the MTA Service (A/AAAA of hostname and mta-sts)."""
    sending: tuple[SendingIp, ...] = ()
    """The address each replica sends from with its EHLO name (from SmtpServer status)."""
    sender_domains: tuple[str, ...] = ()
    """Tenants' sender domains served by this server: SPF and DMARC each."""
    dkim_keys: tuple[DkimPublicKey, ...] = ()
    """Every selector to publish; during a rotation both the old and the new one."""
    dmarc: DmarcSpec = field(default_factory=DmarcSpec)
    mx_host: str | None = None
    """MX target of the return-path domain; the hostname when unset."""
    mx_priority: int = 10
    mta_sts: bool = False
    mta_sts_mode: str = "testing"
    """enforce only when the MTA has a valid certificate for mx_host; testing otherwise."""
    mta_sts_policy_id: str | None = None
    """Policy id; derived from the policy text when unset so any policy change bumps it."""
    tls_rpt_to: tuple[str, ...] = ()
    """TLS-RPT report addresses; postmaster@<return-path domain> when empty."""
    spf_extra: tuple[str, ...] = ()
    """Extra SPF mechanisms (e.g. include:_spf.google.com) counted against the lookup limit."""
    ttl: int = 300
    forward_zones: tuple[str, ...] = ()
    """Zones we may write; empty means every name (external-dns filters by its own domains)."""
    reverse_zones: tuple[str, ...] = ()
    """Reverse zones we may write PTR records to; PTRs outside them are not built."""

    @property
    def mx_target(self) -> str:
        return normalize_name(self.mx_host or self.hostname)


def inputs_from_spec(
    owner: str,
    spec: SmtpServerSpec,
    *,
    sending: Iterable[tuple[str, str]],
    service_addresses: Iterable[str] = (),
    sender_domains: Iterable[str] = (),
    dkim_keys: Iterable[DkimPublicKey] = (),
) -> DnsInputs:
    """Build `DnsInputs` from an SmtpServer spec plus the facts the operator gathered.

    `sending` is (address, ehlo_name) per replica (status.sendingAddresses), `sender_domains`
    the union of the selected Tenants' senderDomains, `dkim_keys` one per spec.dkim.keys entry
    with its key material read from the Secret.
    """
    rfc = spec.dns.rfc2136
    return DnsInputs(
        owner=owner,
        hostname=spec.hostname,
        return_path_domain=spec.return_path_domain,
        service_addresses=tuple(service_addresses),
        sending=tuple(SendingIp(a, e) for a, e in sending),
        sender_domains=tuple(sender_domains),
        dkim_keys=tuple(dkim_keys),
        dmarc=spec.dns.dmarc,
        mta_sts=spec.dns.mta_sts,
        mta_sts_mode="enforce" if spec.tls is not None else "testing",
        ttl=spec.dns.ttl,
        forward_zones=(rfc.zone,) if rfc else (),
        reverse_zones=tuple(rfc.reverse_zones) if rfc else (),
    )


# ------------------------------------------------------------------------------ record texts


def _spf_lookups(terms: Sequence[str]) -> int:
    n = 0
    for term in terms:
        mechanism = re.split(r"[:/=]", term.lstrip("+-~?").lower(), maxsplit=1)[0]
        n += mechanism in _SPF_LOOKUP_TERMS
    return n


def spf_text(addresses: Iterable[str], extra: Sequence[str] = (), *, domain: str = "") -> str:
    """`v=spf1 ip4:… ip6:… -all` authorising exactly `addresses`, adjacent ones as CIDRs.

    Flattened: no include/a/mx terms of our own, so receivers need no further lookups. Raises
    RecordError when `extra` pushes the record past 10 lookups or the text past 512 bytes.
    """
    addresses = list(addresses)
    v4 = ipaddress.collapse_addresses(ipaddress.IPv4Network(a) for a in addresses if ":" not in a)
    v6 = ipaddress.collapse_addresses(ipaddress.IPv6Network(a) for a in addresses if ":" in a)
    terms = [f"ip4:{n.network_address}" if n.prefixlen == 32 else f"ip4:{n}" for n in v4]
    terms += [f"ip6:{n.network_address}" if n.prefixlen == 128 else f"ip6:{n}" for n in v6]
    terms += list(extra)
    lookups = _spf_lookups(terms)
    where = f" for {domain}" if domain else ""
    if lookups > SPF_MAX_LOOKUPS:
        raise RecordError(f"SPF record{where} needs {lookups} DNS lookups; RFC 7208 allows {SPF_MAX_LOOKUPS}")
    text = " ".join(["v=spf1", *terms, "-all"])
    if len(text.encode()) > SPF_MAX_BYTES:
        raise RecordError(
            f"SPF record{where} is {len(text.encode())} bytes; more than {SPF_MAX_BYTES} does not fit a UDP answer "
            "(use fewer or contiguous addresses)"
        )
    return text


ED25519_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")
"""SubjectPublicKeyInfo of an Ed25519 key: this fixed prefix, then the 32-byte key (RFC 8410)."""
RSA_ENCRYPTION_OID = bytes.fromhex("06092a864886f70d010101")
"""The rsaEncryption algorithm identifier (RFC 3279) as it appears near the start of an RSA SPKI."""


def spki_kind(der: bytes) -> str | None:
    """"rsa", "ed25519", or None for anything else (another algorithm, not a key)."""
    if len(der) == len(ED25519_SPKI_PREFIX) + 32 and der.startswith(ED25519_SPKI_PREFIX):
        return "ed25519"
    if der[:1] == b"\x30" and RSA_ENCRYPTION_OID in der[:24]:
        return "rsa"
    return None


def dkim_value(der: bytes) -> str:
    """`v=DKIM1; k=rsa|ed25519; p=…` for a SubjectPublicKeyInfo DER (RFC 6376; RFC 8463's raw Ed25519 key)."""
    kind = spki_kind(der)
    if kind is None:
        raise RecordError("DKIM key: only RSA and Ed25519 keys are supported")
    p = der[len(ED25519_SPKI_PREFIX):] if kind == "ed25519" else der
    return f"v=DKIM1; k={kind}; p={base64.b64encode(p).decode()}"


def dkim_text(key: DkimPublicKey) -> str:
    """The TXT value for `key`, refused when the key is not of the selector's algorithm."""
    kind = spki_kind(key.key)
    if kind is None:
        raise RecordError(f"DKIM key {key.selector}._domainkey.{key.domain}: only RSA and Ed25519 keys are supported")
    want = "ed25519" if key.algorithm == DkimAlgorithm.ED25519_SHA256 else "rsa"
    if kind != want:
        raise RecordError(f"DKIM key {key.selector}._domainkey.{key.domain} is {kind} but algorithm is {key.algorithm}")
    return dkim_value(key.key)


def _mailto(address: str) -> str:
    # RFC 7489 section 6.2: commas and exclamation marks in a URI must be percent-encoded.
    return "mailto:" + address.replace("%", "%25").replace(",", "%2C").replace("!", "%21").replace(";", "%3B")


def dmarc_text(dmarc: DmarcSpec) -> str:
    """`v=DMARC1; p=…; rua=mailto:…; [pct=…;] adkim=r; aspf=r` (relaxed alignment, RFC 7489/9989)."""
    parts = ["v=DMARC1", f"p={DmarcPolicy(dmarc.policy).value}"]
    if dmarc.aggregate_report_to:
        parts.append("rua=" + ",".join(_mailto(a) for a in sorted(dmarc.aggregate_report_to)))
    # pct=100 is RFC 7489's default and RFC 9989 (DMARCbis) dropped pct: only say it when it
    # matters; pct=0 is DMARCbis's t=y (test mode), so say both for old and new receivers.
    if dmarc.percent != 100:
        parts.append(f"pct={dmarc.percent}")
    if dmarc.percent == 0:
        parts.append("t=y")
    parts += ["adkim=r", "aspf=r"]
    return "; ".join(parts)


def mta_sts_policy(mx_hosts: Iterable[str], mode: str = "enforce", max_age: int = MTA_STS_MAX_AGE) -> str:
    """The policy file served at https://mta-sts.<domain>/.well-known/mta-sts.txt (RFC 8461 3.2)."""
    if mode not in ("enforce", "testing", "none"):
        raise RecordError(f"MTA-STS mode must be enforce, testing or none, not {mode!r}")
    lines = ["version: STSv1", f"mode: {mode}"]
    lines += [f"mx: {normalize_name(h)}" for h in sorted(set(mx_hosts))]
    lines.append(f"max_age: {max_age}")
    return "\r\n".join(lines) + "\r\n"


def mta_sts_policy_id(policy: str) -> str:
    """An id (1-32 alphanumerics) that changes whenever the policy text changes."""
    return hashlib.sha256(policy.encode()).hexdigest()[:20]


def mta_sts_policy_text(inputs: DnsInputs) -> str:
    """The MTA-STS policy text for `inputs` (what the MTA's HTTPS endpoint serves)."""
    return mta_sts_policy([inputs.mx_target], inputs.mta_sts_mode)


# ----------------------------------------------------------------------------------- builders


def _address_type(address: str) -> str:
    return "AAAA" if ipaddress.ip_address(address).version == 6 else "A"


def _all_records(inputs: DnsInputs) -> list[Record]:
    ttl = inputs.ttl
    addrs: dict[tuple[str, str], set[str]] = defaultdict(set)
    txt: dict[str, str] = {}

    def host(name: str, address: str) -> None:
        addrs[(normalize_name(name), _address_type(address))].add(str(ipaddress.ip_address(address)))

    for a in inputs.service_addresses:
        host(inputs.hostname, a)
    for s in inputs.sending:
        host(s.ehlo_name, s.address)

    out: list[Record] = []
    for s in inputs.sending:
        out.append(Record(reverse_name(s.address), "PTR", ttl, (normalize_name(s.ehlo_name) + ".",)))

    rp = normalize_name(inputs.return_path_domain)
    sending = sorted({s.address for s in inputs.sending})
    for domain in sorted({normalize_name(d) for d in (*inputs.sender_domains, rp)}):
        txt[domain] = spf_text(sending, inputs.spf_extra, domain=domain)
    for domain in sorted({normalize_name(d) for d in inputs.sender_domains}):
        txt[f"_dmarc.{domain}"] = dmarc_text(inputs.dmarc)
    for k in inputs.dkim_keys:
        txt[f"{k.selector.lower()}._domainkey.{normalize_name(k.domain)}"] = dkim_text(k)
    out.append(Record(rp, "MX", ttl, (f"{inputs.mx_priority} {inputs.mx_target}.",)))
    if inputs.mta_sts:
        policy_id = inputs.mta_sts_policy_id or mta_sts_policy_id(mta_sts_policy_text(inputs))
        txt[f"_mta-sts.{rp}"] = f"v=STSv1; id={policy_id}"
        rua = inputs.tls_rpt_to or (f"postmaster@{rp}",)
        txt[f"_smtp._tls.{rp}"] = "v=TLSRPTv1; rua=" + ",".join(_mailto(a) for a in rua)
        for a in inputs.service_addresses:
            host(f"mta-sts.{rp}", a)

    out += [Record(name, rtype, ttl, tuple(vals)) for (name, rtype), vals in addrs.items()]
    out += [Record(name, "TXT", ttl, (txt_value(text),)) for name, text in txt.items()]
    return sorted(out)


def _ours(record: Record, inputs: DnsInputs) -> bool:
    if record.rtype == "PTR":
        return zone_of(record.name, inputs.reverse_zones) is not None
    return not inputs.forward_zones or zone_of(record.name, inputs.forward_zones) is not None


def split_records(inputs: DnsInputs) -> tuple[list[Record], list[Record]]:
    """`build_records` and `unmanaged_records` from one build: a reconcile needs both."""
    ours: list[Record] = []
    theirs: list[Record] = []
    for r in _all_records(inputs):
        (ours if _ours(r, inputs) else theirs).append(r)
    return ours, theirs


def build_records(inputs: DnsInputs) -> list[Record]:
    """Every record set we publish for `inputs`, sorted by (name, type).

    Only names inside our forward zones (or any name when none are given) and PTRs inside our
    reverse zones; `unmanaged_records` lists the rest for the user to publish by hand.
    """
    return split_records(inputs)[0]


def unmanaged_records(inputs: DnsInputs) -> list[Record]:
    """Records the server needs but we may not write (outside our zones): report them on status."""
    return split_records(inputs)[1]


def desired_diff(
    current: Iterable[Record], desired: Iterable[Record]
) -> tuple[list[Record], list[Record], list[Record]]:
    """(to_add, to_delete, unchanged) by record set.

    A record set whose values or TTL changed appears in to_delete (old) and to_add (new), so a
    provider can replace it; anything equal is left alone.
    """
    cur = {r.key: r for r in current}
    want = {r.key: r for r in desired}
    unchanged = sorted(r for k, r in want.items() if cur.get(k) == r)
    to_add = sorted(r for k, r in want.items() if cur.get(k) != r)
    to_delete = sorted(r for k, r in cur.items() if want.get(k) != r)
    return to_add, to_delete, unchanged
