"""The MTA pod the operator writes runs non-root on a read-only root filesystem, as `restricted` requires."""

from __future__ import annotations

import json
from typing import Any

from smtpinfra_api.v1alpha1 import SmtpServerSpec
from smtpinfra_operator.builders import workload

OWNER = workload.Owner(name="out", namespace="mail", uid="u-1")


def _pod_spec() -> dict[str, Any]:
    spec = SmtpServerSpec.model_validate({"hostname": "mta.example.test", "ipPools": ["p"],
                                          "returnPathDomain": "bounces.example.test"})
    sts = workload.statefulset(OWNER, spec, 2, "smtp-infra/mta:0.1.0", "tls")
    pod: dict[str, Any] = sts["spec"]["template"]["spec"]
    return pod


def test_mta_pod_is_non_root_with_a_read_only_root_filesystem() -> None:
    pod = _pod_spec()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == workload.MTA_UID != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in pod["containers"]:
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert set(sc["capabilities"].get("add", [])) <= {"NET_BIND_SERVICE"}  # ports 25/465/587


def test_mta_pod_passes_the_restricted_pod_security_admission(control_plane: Any) -> None:
    """The API server's Pod Security admission, enforcing `restricted`, admits the MTA pod."""
    namespace = "mta-restricted"
    control_plane.kubectl("create", "namespace", namespace, check=False)
    control_plane.kubectl("label", "--overwrite", "namespace", namespace,
                          "pod-security.kubernetes.io/enforce=restricted")
    spec = _pod_spec()
    # The spool comes from the StatefulSet's volumeClaimTemplates; a bare pod needs a volume of its own.
    spec["volumes"] = [*spec.get("volumes", []), {"name": "spool", "emptyDir": {}}]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mta", "namespace": namespace}, "spec": spec}
    result = control_plane.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(pod), check=False)
    assert result.returncode == 0, result.stderr
