"""The config schema: the operator/MTA contract."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from smtpinfra_mta import config as config_module
from smtpinfra_mta.config import ConfigError, MtaConfig, dump_config, load_config, parse_config
from smtpinfra_mta.passwords import hash_password, is_password_hash, verify_password

pytestmark = pytest.mark.mta

HASH = hash_password("pw", cost=10)


def minimal(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "hostname": "mta-0.example.com",
        "tls": {"cert_file": "/tls/tls.crt", "key_file": "/tls/tls.key"},
        "listeners": {"inbound": {"domains": ["bounces.example.com"]}},
        "pools": [{"name": "shared", "source_ips": [{"address": "192.0.2.10", "ehlo_name": "o1.example.com"}]}],
        "tenants": [{"name": "acme", "credentials": [{"username": "acme", "password_hash": HASH}],
                     "sender_domains": ["acme.example"], "pool": "shared"}],
    }
    cfg.update(over)
    return cfg


def test_minimal_config_gets_sane_defaults() -> None:
    cfg = parse_config(minimal())
    assert cfg.listeners.submission.port == 587
    assert cfg.listeners.implicit_tls.enabled is False
    assert cfg.listeners.inbound.port == 25
    assert cfg.http.port == 8080
    assert cfg.spool.directory == Path("/var/spool/smtp-infra")
    assert cfg.delivery.starttls == "opportunistic"
    assert cfg.suppression.url.startswith("sqlite:///")


def test_durations_and_rates_accept_human_units() -> None:
    cfg = parse_config(minimal(
        delivery={"retry_schedule": ["30s", "5m", 3600, "1d"], "max_queue_age": "2d"},
        throttling={"providers": [{"name": "google", "mx_suffixes": ["google.com"]}],
                    "rules": [{"scope": "provider", "match": "google", "max_message_rate": "3600/h",
                               "connection_limit": 5, "max_deliveries_per_connection": 50}],
                    "automation": [{"name": "yahoo-tss04", "regex": r"\[TSS04\]", "action": "suspend",
                                    "duration": "2h"}]},
    ))
    assert cfg.delivery.retry_schedule == [30, 300, 3600, 86400]
    assert cfg.delivery.max_queue_age == 2 * 86400
    assert cfg.throttling.rules[0].max_message_rate == pytest.approx(1.0)
    assert cfg.throttling.automation[0].duration == 7200


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hostname": "not a host"}, "hostname: invalid domain name"),
        ({"tenants": [{"name": "acme", "sender_domains": ["acme.example"], "pool": "nope"}]}, "pool 'nope'"),
        ({"tls": None}, "need 'tls'"),
        ({"listeners": {"inbound": {"domains": []}}}, "has no 'domains'"),
        ({"delivery": {"retry_schedule": ["soon"]}}, "invalid duration 'soon'"),
        ({"throttling": {"rules": [{"scope": "domain", "connection_limit": 1}]}}, "needs 'match'"),
        ({"throttling": {"rules": [{"scope": "provider", "match": "x"}]}}, "unknown provider 'x'"),
        ({"throttling": {"automation": [{"name": "a", "regex": "(", "action": "suspend", "duration": 1}]}},
         "regex does not compile"),
        ({"throttling": {"automation": [{"name": "a", "regex": "x", "action": "throttle", "duration": 1}]}},
         "needs max_message_rate"),
        ({"throttling": {"rules": [{"scope": "default", "max_message_rate": "fast"}]}}, "invalid rate 'fast'"),
        ({"pools": [{"name": "shared", "source_ips": [{"address": "999.1.1.1", "ehlo_name": "a.b"}]}]},
         "source_ips.0.address"),
        ({"lisenters": {}}, "lisenters: Extra inputs are not permitted"),
        ({"dkim": [{"domain": "a.example", "selector": "s", "algorithm": "rsa-sha1", "key_file": "/k"}]},
         "dkim.0.algorithm"),
    ],
)
def test_validation_errors_are_clear(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(minimal(**change), "mta.yaml")
    assert message in str(exc.value)
    assert str(exc.value).startswith("mta.yaml:")


def test_bad_password_hash_is_refused() -> None:
    bad = minimal(tenants=[{"name": "acme", "credentials": [{"username": "acme", "password_hash": "plaintext"}],
                            "sender_domains": ["acme.example"], "pool": "shared"}])
    with pytest.raises(ConfigError, match="password_hash is not a supported hash"):
        parse_config(bad)


def test_two_tenants_cannot_claim_one_domain_or_username() -> None:
    t = {"credentials": [{"username": "u", "password_hash": HASH}], "sender_domains": ["same.example"],
         "pool": "shared"}
    with pytest.raises(ConfigError, match="claimed by tenants"):
        parse_config(minimal(tenants=[{"name": "a", **t}, {"name": "b", **t, "credentials": []}]))
    with pytest.raises(ConfigError, match="username 'u' is used by tenants"):
        parse_config(minimal(tenants=[{"name": "a", **t}, {"name": "b", **t, "sender_domains": ["o.example"]}]))


POLICY = "version: STSv1\r\nmode: enforce\r\nmx: smtp.example.com\r\nmax_age: 604800\r\n"


def test_mta_sts_policy_is_validated_and_kept_verbatim() -> None:
    cfg = parse_config(minimal(mta_sts={"policy": POLICY}, http={"mta_sts_port": 8443}))
    assert cfg.mta_sts is not None and cfg.mta_sts.policy == POLICY  # byte for byte: its id is in DNS
    assert cfg.http.mta_sts_port == 8443
    assert parse_config(yaml.safe_load(dump_config(cfg))) == cfg
    assert parse_config(minimal()).mta_sts is None and parse_config(minimal()).http.mta_sts_port is None
    # LF line endings, extension fields and a mode-none policy without mx lines are valid
    parse_config(minimal(mta_sts={"policy": "version: STSv1\nmode: none\nmax_age: 86400\next: 1\n"}))
    parse_config(minimal(mta_sts={"policy": POLICY.replace("smtp.example.com", "*.mx.example.com")}))


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"mta_sts": {"policy": POLICY.replace("STSv1", "STSv2")}}, "version must be 'STSv1'"),
        ({"mta_sts": {"policy": POLICY.replace("enforce", "strict")}}, "MTA-STS mode must be one of"),
        ({"mta_sts": {"policy": POLICY.replace("604800", "31557601")}}, "max_age must be a number"),
        ({"mta_sts": {"policy": POLICY.replace("max_age: 604800\r\n", "")}}, "exactly one 'max_age'"),
        ({"mta_sts": {"policy": POLICY + "mode: testing\r\n"}}, "exactly one 'mode'"),
        ({"mta_sts": {"policy": POLICY.replace("mx: smtp.example.com\r\n", "")}}, "needs at least one 'mx'"),
        ({"mta_sts": {"policy": POLICY.replace("smtp.example.com", "smtp.*.com")}}, "is not a host name"),
        ({"mta_sts": {"policy": POLICY + "garbage\r\n"}}, "is not 'key: value'"),
        ({"mta_sts": {"policy": ""}}, "mta_sts.policy"),
        ({"http": {"mta_sts_port": 8443}}, "http.mta_sts_port (the HTTPS policy listener) needs 'mta_sts'"),
        ({"mta_sts": {"policy": POLICY}, "http": {"mta_sts_port": 8443}, "tls": None,
          "listeners": {"submission": {"enabled": False}, "inbound": {"domains": ["b.example.com"]}}},
         "needs 'mta_sts' and 'tls'"),
        ({"mta_sts": {"policy": POLICY}, "http": {"mta_sts_port": 8080}}, "must differ from http.port"),
    ],
)
def test_mta_sts_errors_are_clear(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(minimal(**config), "mta.yaml")
    assert message in str(exc.value)


def test_rendered_config_round_trips_and_is_yaml_too(tmp_path: Path) -> None:
    """The operator renders JSON (fast to write and read); it is ASCII, so any YAML reader takes it as well."""
    policy = POLICY + "ext: caf\u00e9 \U0001f600\r\n"  # non-ASCII, beyond the BMP too
    cfg = parse_config(minimal(throttling={"rules": [{"scope": "default", "max_message_rate": "100/m"}]},
                               mta_sts={"policy": policy}, http={"mta_sts_port": 8443}))
    text = dump_config(cfg)
    assert text.isascii() and text.startswith("{\n")
    path = tmp_path / "mta.yaml"
    path.write_text(text)
    assert load_config(path) == cfg
    assert cfg.mta_sts is not None and load_config(path).mta_sts == cfg.mta_sts
    assert parse_config(yaml.safe_load(dump_config(parse_config(minimal())))) == parse_config(minimal())


def test_a_hand_written_yaml_config_loads(tmp_path: Path) -> None:
    cfg = parse_config(minimal(throttling={"rules": [{"scope": "default", "max_message_rate": "100/m"}]}))
    path = tmp_path / "mta.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
    assert load_config(path) == cfg


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("hostname: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(tmp_path / "list.yaml")


def _all_models(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    if model in seen:
        return
    seen.add(model)
    for f in model.model_fields.values():
        for arg in [f.annotation, *getattr(f.annotation, "__args__", ())]:
            for inner in [arg, *getattr(arg, "__args__", ())]:
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    _all_models(inner, seen)


def test_every_field_has_a_description() -> None:
    seen: set[type[BaseModel]] = set()
    _all_models(MtaConfig, seen)
    assert len(seen) > 15
    missing = [f"{m.__name__}.{n}" for m in seen for n, f in m.model_fields.items() if not f.description]
    assert missing == []


def test_json_schema_is_exportable() -> None:
    schema = MtaConfig.model_json_schema()
    assert "tenants" in schema["properties"]
    assert Path("/etc/smtp-infra/mta.yaml") == config_module.DEFAULT_CONFIG_PATH


def test_password_hash_formats() -> None:
    s = hash_password("correct horse", cost=10)
    assert s.startswith("$scrypt$ln=10,r=8,p=1$")
    assert is_password_hash(s)
    assert verify_password("correct horse", s)
    assert not verify_password("wrong", s)
    p = hash_password("correct horse", "pbkdf2-sha256", cost=1000)
    assert p.startswith("$pbkdf2-sha256$1000$")
    assert verify_password(b"correct horse", p)
    assert not verify_password("Correct horse", p)
    assert not verify_password("x", "$scrypt$ln=99,r=8,p=1$AAAA$AAAA")
    assert not verify_password("x", "garbage")


def test_passlib_compatible_pbkdf2_vector() -> None:
    # passlib.hash.pbkdf2_sha256.hash("password", rounds=1000, salt=b"salt" * 4)
    import base64
    import hashlib

    digest = hashlib.pbkdf2_hmac("sha256", b"password", b"salt" * 4, 1000, 32)
    ab64 = base64.b64encode(digest).decode().rstrip("=").replace("+", ".")
    salt = base64.b64encode(b"salt" * 4).decode().rstrip("=").replace("+", ".")
    assert verify_password("password", f"$pbkdf2-sha256$1000${salt}${ab64}")


@settings(max_examples=200, deadline=None)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=12), c, max_size=4),
                    max_leaves=20))
def test_fuzzed_config_only_raises_config_error(data: Any) -> None:
    with contextlib.suppress(ConfigError):
        assert isinstance(parse_config(data), MtaConfig)  # anything else than ConfigError fails the test


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_fuzzed_yaml_only_raises_config_error(text: str) -> None:
    with contextlib.suppress(ConfigError, yaml.YAMLError):
        assert isinstance(parse_config(yaml.safe_load(text)), MtaConfig)
