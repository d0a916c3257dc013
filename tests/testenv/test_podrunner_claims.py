"""The pod runner's claim binding, without a cluster: which claims a pod uses, the PV it gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from smtpinfra_testenv.podrunner.claims import RUNNER_LABEL, claim_names, persistent_volume, pv_name

pytestmark = pytest.mark.testenv


def test_claims_of_a_pod_are_its_pvcs_and_its_ephemeral_volumes():
    pod = {"metadata": {"name": "outbound-0"}, "spec": {"volumes": [
        {"name": "spool", "persistentVolumeClaim": {"claimName": "spool-outbound-0"}},
        {"name": "scratch", "ephemeral": {"volumeClaimTemplate": {"spec": {}}}},
        {"name": "config", "configMap": {"name": "outbound-config"}},
        {"name": "tmp", "emptyDir": {}},
    ]}}
    assert claim_names(pod) == ["spool-outbound-0", "outbound-0-scratch"]
    assert claim_names({"metadata": {"name": "p"}, "spec": {}}) == []


def test_pv_names_are_stable_and_short_enough():
    assert pv_name("mail", "spool-outbound-0") == "pod-runner-mail-spool-outbound-0"
    long_name = pv_name("n" * 63, "c" * 200)
    assert long_name == pv_name("n" * 63, "c" * 200)
    assert long_name.startswith("pod-runner-") and len(long_name) <= 63
    assert long_name != pv_name("n" * 63, "c" * 199 + "d")


def test_persistent_volume_is_pre_bound_to_the_claim_and_kept():
    claim = {"metadata": {"uid": "u-1"}, "spec": {"resources": {"requests": {"storage": "5Gi"}},
                                                 "accessModes": ["ReadWriteOnce"], "storageClassName": "fast"}}
    pv = persistent_volume("mail", "spool-outbound-0", claim, Path("/state/pvc/mail/spool-outbound-0"))
    assert pv["metadata"]["name"] == "pod-runner-mail-spool-outbound-0"
    assert pv["metadata"]["labels"] == {RUNNER_LABEL: "true"}
    spec = pv["spec"]
    assert spec["capacity"] == {"storage": "5Gi"}
    assert spec["storageClassName"] == "fast"
    assert spec["persistentVolumeReclaimPolicy"] == "Retain"  # the data outlives the claim
    assert spec["hostPath"] == {"path": "/state/pvc/mail/spool-outbound-0", "type": "DirectoryOrCreate"}
    assert spec["claimRef"] == {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "namespace": "mail",
                                "name": "spool-outbound-0", "uid": "u-1"}


def test_persistent_volume_defaults_follow_the_claim():
    pv = persistent_volume("ns", "c", {"metadata": {"uid": "u"}}, Path("/d"))
    assert pv["spec"]["capacity"] == {"storage": "1Gi"}
    assert pv["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert pv["spec"]["storageClassName"] == ""
    assert pv["spec"]["volumeMode"] == "Filesystem"
