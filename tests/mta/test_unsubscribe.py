"""One-click unsubscribe (RFC 8058) on the MTA's HTTP listener: GET shows a page and changes nothing, POST
with List-Unsubscribe=One-Click (urlencoded or multipart) suppresses at once; bad tokens learn nothing."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest

from smtpinfra_mta.campaign_contract import sender_key, sign_unsubscribe
from smtpinfra_mta.unsubscribe import one_click

from .conftest import MTA_ADDR, Dns, RunningMta, Sink, base_config, submit, swaks, wait_for

pytestmark = pytest.mark.mta

CURRENT, PREVIOUS = b"unsubscribe-key-2026-12-current", b"unsubscribe-key-2026-11-previous"


def _sign(server_key: bytes, tenant: str, namespace: str, campaign: str, address: str) -> str:
    """A link as a campaign's sender signs it: with the key derived from the server's for its tenant."""
    return sign_unsubscribe(sender_key(server_key, tenant, namespace), tenant, namespace, campaign, address)


def _request(mta: RunningMta, method: str, path: str, body: bytes = b"",
             headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    assert mta.app.http_port is not None
    conn = http.client.HTTPConnection(MTA_ADDR, mta.app.http_port, timeout=10)
    try:
        conn.request(method, path, body=body or None, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _suppressed(mta: RunningMta, tenant: str = "alpha") -> dict[str, str]:
    assert mta.app.suppression is not None
    return {e.address: e.reason for e in mta.run(mta.app.suppression.entries(tenant))}


def _stats(mta: RunningMta) -> dict[str, Any]:
    status, _, body = _request(mta, "GET", "/stats")
    assert status == 200
    result: dict[str, Any] = json.loads(body)
    return result


@pytest.fixture
def keyed_config(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str]) -> dict[str, Any]:
    (tmp_path / "current.key").write_bytes(CURRENT + b"\n")
    (tmp_path / "previous.key").write_bytes(PREVIOUS + b"\n")
    cfg = base_config(tmp_path, tls_files, password_hashes)
    cfg["unsubscribe"] = {"keys": [str(tmp_path / "current.key"), str(tmp_path / "previous.key")]}
    return cfg


def test_one_click_body_forms() -> None:
    assert one_click("application/x-www-form-urlencoded", b"List-Unsubscribe=One-Click")
    assert not one_click("application/x-www-form-urlencoded", b"List-Unsubscribe=Maybe")
    assert not one_click("text/plain", b"List-Unsubscribe=One-Click")
    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--XyZ--\r\n")
    assert one_click("multipart/form-data; boundary=XyZ", body)
    assert not one_click("multipart/form-data; boundary=XyZ", body.replace(b"One-Click", b"Two-Clicks"))


def test_get_shows_a_page_and_post_unsubscribes(keyed_config: dict[str, Any], mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(keyed_config)
    token = _sign(PREVIOUS, "alpha", "shop", "spring", "Fan@Example.TEST")  # previous key still valid
    path = f"/unsubscribe/{token}"

    status, headers, page = _request(mta, "GET", path)
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b'method="post"' in page and b'name="List-Unsubscribe" value="One-Click"' in page
    assert _suppressed(mta) == {}  # a GET changes nothing (link scanners, previews)

    status, headers, _ = _request(mta, "POST", path, b"List-Unsubscribe=One-Click",
                                  {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 200
    assert "location" not in headers and "set-cookie" not in headers
    assert _suppressed(mta) == {"fan@example.test": "unsubscribe"}  # before the answer, not later
    assert _stats(mta)["campaigns"]["shop/spring"]["unsubscribed"] == 1
    assert _request(mta, "POST", path, b"List-Unsubscribe=One-Click",
                    {"Content-Type": "application/x-www-form-urlencoded"})[0] == 200
    assert _stats(mta)["campaigns"]["shop/spring"]["unsubscribed"] == 1  # a second click is the same one

    token2 = _sign(CURRENT, "alpha", "shop", "spring", "other@example.test")
    body = b"--b0\r\nContent-Disposition: form-data; name=\"List-Unsubscribe\"\r\n\r\nOne-Click\r\n--b0--\r\n"
    status, _, _ = _request(mta, "POST", f"/unsubscribe/{token2}", body,
                            {"Content-Type": "multipart/form-data; boundary=b0"})
    assert status == 200
    assert _suppressed(mta)["other@example.test"] == "unsubscribe"


def test_bad_tokens_and_bodies_change_nothing(keyed_config: dict[str, Any], mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(keyed_config)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    good = _sign(CURRENT, "alpha", "shop", "spring", "x@example.test")
    payload, mac = good.split(".")
    forged = f"{payload}.{'A' if mac[0] != 'A' else 'B'}{mac[1:]}"
    unknown_key = _sign(b"somebody-elses-key-0000000000", "alpha", "shop", "spring", "x@example.test")
    for token in (forged, unknown_key, "garbage", "a.b", "x" * 5000):
        status, _, body = _request(mta, "POST", f"/unsubscribe/{token}", b"List-Unsubscribe=One-Click", form)
        assert status in (400, 404, 431) and len(body) < 32, (token[:20], status)
        assert _request(mta, "GET", f"/unsubscribe/{token}")[0] in (400, 404, 431)
    assert _request(mta, "POST", f"/unsubscribe/{good}", b"List-Unsubscribe=Yes", form)[0] == 400
    assert _request(mta, "POST", f"/unsubscribe/{good}", b"x" * 20000, form)[0] == 413
    assert _suppressed(mta) == {}


def test_unsubscribe_answers_404_without_keys(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                              mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(base_config(tmp_path, tls_files, password_hashes))
    token = _sign(CURRENT, "alpha", "shop", "spring", "x@example.test")
    assert _request(mta, "POST", f"/unsubscribe/{token}", b"List-Unsubscribe=One-Click",
                    {"Content-Type": "application/x-www-form-urlencoded"})[0] == 404


@pytest.mark.dns
def test_unsubscribed_address_is_suppressed_for_later_campaign_mail(
        keyed_config: dict[str, Any], mta_factory: Any, sink_factory: Any, dns_server: Dns) -> None:
    sink: Sink = sink_factory()
    keyed_config["delivery"]["port"] = sink.port
    keyed_config["delivery"]["resolver"] = {"address": dns_server.address, "port": dns_server.port, "timeout": "3s"}
    mta: RunningMta = mta_factory(keyed_config)
    token = _sign(CURRENT, "alpha", "shop", "spring", "fan@example.test")
    assert _request(mta, "POST", f"/unsubscribe/{token}", b"List-Unsubscribe=One-Click",
                    {"Content-Type": "application/x-www-form-urlencoded"})[0] == 200
    tag = ["--add-header", "Feedback-ID: autumn:alpha:shop:smtpinfra"]
    assert submit(mta, to="fan@example.test", extra=tag).has("250 2.0.0 OK queued")
    assert submit(mta, to="keen@example.test", extra=tag).has("250 2.0.0 OK queued")
    [delivered] = sink.wait_messages(1, timeout=30)
    assert delivered.rcpts == ["keen@example.test"]
    wait_for(lambda: _stats(mta)["campaigns"].get("shop/autumn", {}).get("suppressed") == 1, timeout=30)
    assert _stats(mta)["campaigns"]["shop/autumn"]["delivered"] == 1
    assert [m.rcpts for m in sink.messages()] == [["keen@example.test"]]


def test_mailto_unsubscribe_by_subject_token(keyed_config: dict[str, Any], mta_factory: Any) -> None:
    mta: RunningMta = mta_factory(keyed_config)
    token = _sign(CURRENT, "alpha", "shop", "spring", "mailer@example.test")
    forged = _sign(b"not-the-servers-key-000000000000", "alpha", "shop", "spring", "victim@example.test")
    for subject in (f"unsubscribe {forged}", f"Unsubscribe {token}"):
        r = swaks("--server", f"{MTA_ADDR}:{mta.inbound_port}", "--ehlo", "client.example.test",
                  "--from", "mailer@example.test", "--to", "unsubscribe@bounces.mta.test",
                  "--header", f"Subject: {subject}", "--body", "please remove me")
        assert r.has("250 2.0.0 OK queued"), r.transcript
    wait_for(lambda: "mailer@example.test" in _suppressed(mta), timeout=30)
    wait_for(lambda: mta.app.spool.queued_ids() == [], timeout=30)
    assert _suppressed(mta) == {"mailer@example.test": "unsubscribe"}  # the forged token did nothing
    assert _stats(mta)["campaigns"]["shop/spring"]["unsubscribed"] == 1
