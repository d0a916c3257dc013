"""The VERP key Secret of an SmtpServer (pure builders): created once, mounted, named in the MTA config,
and rotated so that the previous key keeps verifying."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from smtpinfra_api.v1alpha1 import SmtpServerSpec
from smtpinfra_mta.config import parse_config
from smtpinfra_mta.verp import Verp, load_keys
from smtpinfra_operator.builders import verp, workload
from smtpinfra_operator.builders.mtaconfig import VERP_DIR, ServerInputs, config_map_data

pytestmark = pytest.mark.operator

OWNER = workload.Owner(name="out", namespace="mail", uid="u-1")


def spec() -> SmtpServerSpec:
    return SmtpServerSpec.model_validate({"hostname": "mta.example.test", "ipPools": ["p"],
                                          "returnPathDomain": "bounces.example.test", "tls": {"secretName": "t"}})


def _as_read(obj: dict[str, Any]) -> dict[str, Any]:
    """The Secret as the API server returns it: data base64, a resourceVersion."""
    data = {k: base64.b64encode(v.encode()).decode() for k, v in obj["stringData"].items()}
    meta = {**obj["metadata"], "resourceVersion": "41"}
    return {k: v for k, v in obj.items() if k != "stringData"} | {"metadata": meta, "data": data}


def test_secret_is_owned_labelled_and_holds_one_strong_key() -> None:
    s = verp.secret(OWNER, workload.labels("out"), verp.new_key())
    assert s["metadata"]["name"] == "out-verp" == verp.secret_name("out")
    assert s["metadata"]["ownerReferences"] == [OWNER.reference()]
    assert s["metadata"]["labels"] == workload.labels("out")
    assert list(s["stringData"]) == ["current"] and len(s["stringData"]["current"]) == 64
    assert verp.new_key() != verp.new_key()


def test_rotation_keeps_the_old_key_as_previous_and_the_resource_version() -> None:
    first = _as_read(verp.secret(OWNER, {}, "a" * 64))
    once = verp.rotated(first, "b" * 64, "2026-12-01T00:00:00+00:00")
    decoded = {k: base64.b64decode(v).decode() for k, v in once["data"].items()}
    assert decoded == {"current": "b" * 64, "previous": "a" * 64}
    assert once["metadata"]["resourceVersion"] == "41"  # a concurrent change makes the replace fail (409)
    assert once["metadata"]["annotations"][verp.ROTATED_AT_ANNOTATION] == "2026-12-01T00:00:00+00:00"
    twice = verp.rotated(once, "c" * 64, "2026-12-02T00:00:00+00:00")
    decoded = {k: base64.b64decode(v).decode() for k, v in twice["data"].items()}
    assert decoded == {"current": "c" * 64, "previous": "b" * 64}  # the oldest key is gone
    assert first["data"] == _as_read(verp.secret(OWNER, {}, "a" * 64))["data"]  # input not modified
    with pytest.raises(ValueError, match="no 'current'"):
        verp.rotated({"metadata": {"name": "x"}, "data": {}}, "d" * 64, "now")


def test_every_replica_mounts_the_secret_where_its_config_reads_the_keys(tmp_path: Path) -> None:
    sts = workload.statefulset(OWNER, spec(), 2, "img:1", None)
    pod = sts["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == "out-verp")
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"])
    assert mount["mountPath"] == str(VERP_DIR) and mount["readOnly"]
    assert "items" not in volume["secret"]  # 'previous' appears after a rotation without a new pod spec

    data = config_map_data(ServerInputs(name="out", namespace="mail", spec=spec(), tenants=[],
                                        replica_addresses={0: [], 1: []}))
    files = {parse_config(yaml.safe_load(text)).bounces.verp_key_files[0] for text in data.values()}
    assert files == {Path(VERP_DIR / "current")}, "every replica signs with the same key file"
    # the MTA reads what the Secret projects: current signs; previous verifies once present
    (tmp_path / "current").write_text("k" * 64)
    cfg = parse_config(yaml.safe_load(next(iter(data.values()))))
    paths = [tmp_path / p.name for p in cfg.bounces.verp_key_files]
    assert load_keys(paths) == [b"k" * 64]
    (tmp_path / "previous").write_text("j" * 64)
    old = Verp(b"j" * 64, "bounces.example.test").address("t", "r@x.test")
    assert Verp(load_keys(paths), "bounces.example.test").decode(old) == ("t", "r@x.test")
