"""The DKIM signature of a campaign message covers its compliance headers (RFC 8058 section 4, Feedback-ID)."""

from __future__ import annotations

import re
from pathlib import Path

import dkim
import pytest

from smtpinfra_mta.config import DkimKey
from smtpinfra_mta.dkim_sign import DkimSigner, generate_key_file

pytestmark = pytest.mark.mta

MESSAGE = (
    b"From: news@alpha.test\r\nTo: user@example.test\r\nSubject: November offers\r\n"
    b"Date: Tue, 01 Dec 2026 04:00:00 +0000\r\nMessage-ID: <c1.abc@alpha.test>\r\n"
    b"List-Unsubscribe: <https://mta.alpha.test/unsubscribe/TOKEN>, <mailto:unsub@bounces.mta.test?subject=TOKEN>\r\n"
    b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
    b"Feedback-ID: spring:alpha:shop:smtpinfra\r\n"
    b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello.\r\nAlpha Ltd, 1 Main St\r\n"
)


@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_signature_covers_list_unsubscribe_and_feedback_id(tmp_path: Path, algorithm: str) -> None:
    txt = generate_key_file(tmp_path / "key.pem", algorithm)
    signer = DkimSigner([DkimKey(domain="alpha.test", selector="s1", algorithm=algorithm,
                                 key_file=tmp_path / "key.pem")])
    signed = signer.sign(MESSAGE, "alpha.test")

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == b"s1._domainkey.alpha.test."
        return txt.encode()

    assert dkim.verify(signed, dnsfunc=dnsfunc)
    header = signed.split(b"\r\n\r\n", 1)[0].decode()
    h_tag = re.search(r"\bh=([^;]+)", header.replace("\r\n", "").replace("\t", "").replace(" ", ""))
    assert h_tag is not None
    signed_fields = {f.lower() for f in h_tag.group(1).split(":")}
    assert {"list-unsubscribe", "list-unsubscribe-post", "feedback-id"} <= signed_fields
    for old, new in ((b"unsubscribe/TOKEN>", b"unsubscribe/OTHER>"),
                     (b"List-Unsubscribe=One-Click", b"List-Unsubscribe=Twice"),
                     (b"spring:alpha:shop", b"autumn:alpha:shop")):
        assert not dkim.verify(signed.replace(old, new), dnsfunc=dnsfunc), old
