"""RFC 2136 dynamic updates signed with TSIG (BIND, Knot, PowerDNS, Windows DNS).

Reading uses AXFR signed with the same TSIG key (BIND and Knot allow it per key): one
round-trip per zone shows every record set, foreign ones and all ownership TXTs included,
without knowing the names in advance and without any cache in between. Writing sends one
UPDATE per zone over TCP, so each zone changes atomically, with prerequisites that make a
concurrent edit fail the whole update instead of being overwritten:

* a new record set requires "RRset does not exist" (nobody created one since we read);
* a replaced or deleted record set requires its ownership TXT to still name us.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdataset
import dns.rdatatype
import dns.tsig
import dns.update
import dns.xfr
import dns.zone

from .ownership import Plan, is_owner_record, owner_record_name
from .provider import DnsConcurrentChange, DnsProviderError, DnsRejected, DnsUnavailable
from .records import Record, normalize_name, zone_of

#: Types read back; others (SOA, NS, DNSSEC) are never ours and never block ours.
READ_TYPES = frozenset({"A", "AAAA", "TXT", "MX", "PTR", "CNAME"})
_PREREQ_RCODES = {dns.rcode.YXDOMAIN, dns.rcode.YXRRSET, dns.rcode.NXDOMAIN, dns.rcode.NXRRSET}


class Rfc2136Provider:
    """Publishes into `zones` on one primary server with TSIG-signed updates."""

    def __init__(
        self,
        server: str,
        zones: tuple[str, ...] | list[str],
        *,
        key_name: str,
        secret: str,
        algorithm: str = "hmac-sha256",
        port: int = 53,
        timeout: float = 5.0,
    ) -> None:
        """`secret` is the base64 TSIG secret as in BIND's/Knot's key configuration."""
        self.server = server
        self.port = port
        self._zones = tuple(normalize_name(z) for z in zones)
        self.timeout = timeout
        try:
            self._key = dns.tsig.Key(key_name, secret, algorithm)
        except (ValueError, dns.exception.DNSException) as exc:
            raise DnsRejected(f"TSIG key {key_name}: invalid secret or algorithm {algorithm!r}: {exc}") from None

    @property
    def zones(self) -> tuple[str, ...]:
        return self._zones

    def __repr__(self) -> str:
        return f"Rfc2136Provider({self.server}:{self.port}, zones={list(self._zones)})"

    # ------------------------------------------------------------------------------ helpers

    def _address(self) -> str:
        try:
            ipaddress.ip_address(self.server)
            return self.server
        except ValueError:
            pass
        try:
            return str(socket.getaddrinfo(self.server, self.port, proto=socket.IPPROTO_TCP)[0][4][0])
        except OSError as exc:
            raise DnsUnavailable(f"DNS server {self.server}: cannot resolve its name: {exc}") from None

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        where = f"{action} at {self.server}:{self.port}"
        try:
            yield
        except DnsProviderError:
            raise
        except dns.tsig.PeerError as exc:
            raise DnsRejected(f"{where}: the server rejected TSIG key {self._key.name}: {exc!r}") from None
        except dns.xfr.TransferError as exc:
            raise DnsRejected(f"{where}: zone transfer refused ({dns.rcode.to_text(exc.rcode)}); "
                              "allow AXFR for the TSIG key") from None
        except dns.exception.Timeout:
            raise DnsUnavailable(f"{where}: no answer within {self.timeout:g}s") from None
        except ConnectionRefusedError:
            raise DnsUnavailable(f"{where}: connection refused (is the DNS server running?)") from None
        except (OSError, EOFError) as exc:
            raise DnsUnavailable(f"{where}: {exc.__class__.__name__}: {exc}") from None
        except dns.exception.DNSException as exc:
            raise DnsRejected(f"{where}: {exc.__class__.__name__}: {exc}") from None

    # --------------------------------------------------------------------------------- read

    def read_zone(self, zone: str) -> list[Record]:
        """Every record set of `zone` of the READ_TYPES, by TSIG-signed AXFR."""
        zone = normalize_name(zone)
        z = dns.zone.Zone(zone + ".", relativize=False)
        query = dns.message.make_query(zone + ".", dns.rdatatype.AXFR)
        query.use_tsig(self._key)
        with self._errors(f"AXFR {zone}"):
            dns.query.inbound_xfr(self._address(), z, query=query, port=self.port, timeout=self.timeout,
                                  lifetime=self.timeout * 4)
        out = []
        for name, rdataset in z.iterate_rdatasets():
            rtype = dns.rdatatype.to_text(rdataset.rdtype)
            if rtype in READ_TYPES:
                values = tuple(rd.to_text(origin=z.origin, relativize=False) for rd in rdataset)
                out.append(Record(name.to_text(), rtype, rdataset.ttl, values))
        return sorted(out)

    def read(self) -> list[Record]:
        return sorted(r for zone in self._zones for r in self.read_zone(zone))

    # -------------------------------------------------------------------------------- write

    def apply(self, plan: Plan) -> None:
        """Send `plan` as one atomic UPDATE per zone (deletes, then adds)."""
        updates: dict[str, dns.update.UpdateMessage] = {}

        def update_for(record: Record) -> dns.update.UpdateMessage:
            zone = zone_of(record.name, self._zones)
            if zone is None:
                raise DnsRejected(f"{record.rtype} {record.name} is outside the zones {list(self._zones)}")
            if zone not in updates:
                updates[zone] = dns.update.UpdateMessage(zone, keyring=self._key)
            return updates[zone]

        replaced = {r.key for r in plan.to_delete}
        for r in plan.to_delete:
            u = update_for(r)
            if not is_owner_record(r):
                owner = [o for o in (*plan.to_delete, *plan.unchanged)
                         if o.key == (owner_record_name(r.name, r.rtype), "TXT")]
                if owner:
                    # value-dependent "RRset exists": RFC 2136 3.2.4 wants TTL 0 in prerequisites
                    u.present(owner_record_name(r.name, r.rtype) + ".", _rdataset(owner[0], ttl=0))
            u.delete(r.name + ".", dns.rdatatype.from_text(r.rtype))
        for r in plan.to_add:
            u = update_for(r)
            if r.key not in replaced:
                u.absent(r.name + ".", dns.rdatatype.from_text(r.rtype))
            u.add(r.name + ".", _rdataset(r))
        for zone, u in sorted(updates.items()):
            with self._errors(f"UPDATE {zone}"):
                response = dns.query.tcp(u, self._address(), port=self.port, timeout=self.timeout)
            rcode = response.rcode()
            if rcode in _PREREQ_RCODES:
                raise DnsConcurrentChange(f"UPDATE {zone} at {self.server}:{self.port}: a record set changed since "
                                          f"it was read ({dns.rcode.to_text(rcode)}); nothing was changed, retry")
            if rcode != dns.rcode.NOERROR:
                raise DnsRejected(f"UPDATE {zone} at {self.server}:{self.port} refused: {dns.rcode.to_text(rcode)}"
                                  " (check the TSIG key and the server's update ACL for the zone)")


def _rdataset(record: Record, ttl: int | None = None) -> dns.rdataset.Rdataset:
    ttl = record.ttl if ttl is None else ttl
    return dns.rdataset.from_text_list(dns.rdataclass.IN, record.rtype, ttl, list(record.values),
                                       origin=dns.name.root, relativize=False)
