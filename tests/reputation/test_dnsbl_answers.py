"""The blocklist monitor reads the usual answers without dnspython: the same result as dnspython's parse."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from hypothesis import given
from hypothesis import strategies as st

from smtpinfra_operator.reputation.dnsbl_resolver import _lookup, question_wire, read_a_answer

QNAME = "2.0.0.127.bl.test."

records = st.lists(st.one_of(
    st.tuples(st.just("A"), st.ip_addresses(v=4).map(str)),
    st.tuples(st.just("TXT"), st.text(alphabet="abc listed", max_size=30).map(lambda t: f'"{t}"')),
    st.tuples(st.just("CNAME"), st.just("elsewhere.bl.test.")),
), max_size=6)


def response(answers: list[tuple[str, str]], rcode: dns.rcode.Rcode, authoritative: bool, recursion: bool) -> bytes:
    query = dns.message.make_query(QNAME, dns.rdatatype.A)
    reply = dns.message.make_response(query)
    reply.flags = dns.flags.QR | (dns.flags.AA if authoritative else 0) | (dns.flags.RA if recursion else 0)
    reply.set_rcode(rcode)  # after the flags: the RCODE is their low four bits
    for rtype, value in answers:
        reply.answer.append(dns.rrset.from_text(QNAME, 300, "IN", rtype, value))
    return reply.to_wire()


@given(records, st.sampled_from([dns.rcode.NOERROR, dns.rcode.NOERROR, dns.rcode.SERVFAIL, dns.rcode.REFUSED]),
       st.booleans(), st.booleans())
def test_fast_read_agrees_with_dnspython(answers: list[tuple[str, str]], rcode: dns.rcode.Rcode, authoritative: bool,
                                         recursion: bool) -> None:
    wire = response(answers, rcode, authoritative, recursion)
    fast = read_a_answer(wire, 12 + len(question_wire(QNAME)))
    full = _lookup(dns.message.from_wire(wire))
    if rcode != dns.rcode.NOERROR:
        assert fast is None  # dnspython reads those
    else:
        assert fast is not None
        assert (fast.kind, sorted(fast.addresses), fast.detail) == (full.kind, sorted(full.addresses), full.detail)


def test_truncated_or_uncompressed_sections_are_left_to_dnspython() -> None:
    wire = response([("A", "127.0.0.2")], dns.rcode.NOERROR, True, False)
    offset = 12 + len(question_wire(QNAME))
    assert read_a_answer(wire[:-2], offset) is None  # RDATA cut short
    uncompressed = wire[:offset] + question_wire(QNAME)[:-4] + wire[offset + 2:]
    assert read_a_answer(uncompressed, offset) is None
