"""The pod runner's Service names in /etc/hosts (its stand-in for cluster DNS + kube-proxy), pure part."""

from __future__ import annotations

from typing import Any

from smtpinfra_testenv.podrunner.servicedns import hosts_lines, pod_names, service_endpoints


def pod(ns: str, name: str, ip: str, labels: dict[str, str], ready: bool = True, deleting: bool = False) -> Any:
    meta: dict[str, Any] = {"namespace": ns, "name": name, "labels": labels}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"podIP": ip, "conditions": [{"type": "Ready",
                                                                       "status": "True" if ready else "False"}]}}


def service(ns: str, name: str, selector: dict[str, str] | None) -> Any:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"selector": selector} if selector else {}}


def test_a_service_maps_to_one_ready_pod_it_selects() -> None:
    pods = [pod("mail", "out-0", "127.66.0.9", {"app": "out"}),
            pod("mail", "out-1", "127.66.0.10", {"app": "out"}),
            pod("mail", "out-2", "127.66.0.2", {"app": "out"}, ready=False),
            pod("mail", "out-3", "127.66.0.3", {"app": "out"}, deleting=True),
            pod("other", "out-0", "127.66.0.1", {"app": "out"})]
    services = [service("mail", "out-submission", {"app": "out"}), service("mail", "none", {"app": "gone"}),
                service("mail", "external", None)]
    assert service_endpoints(services, pods) == {("mail", "out-submission"): "127.66.0.9"}


def test_hosts_lines_name_every_form_and_the_short_name_only_in_the_own_namespace() -> None:
    endpoints = {("mail", "out-submission"): "127.66.0.9"}
    assert hosts_lines(endpoints, "mail") == [
        "127.66.0.9\tout-submission.mail.svc.cluster.local out-submission.mail.svc out-submission.mail out-submission"]
    assert hosts_lines(endpoints, "tenant-acme") == [
        "127.66.0.9\tout-submission.mail.svc.cluster.local out-submission.mail.svc out-submission.mail"]


def test_statefulset_pods_get_their_names_under_the_headless_service() -> None:
    def member(name: str, ip: str, subdomain: str, ready: bool = True) -> Any:
        p = pod("mail", name, ip, {"app": "out"}, ready=ready)
        p["spec"] = {"hostname": name, "subdomain": subdomain}
        return p

    pods = [member("out-0", "127.66.0.9", "out-pods"), member("out-1", "127.66.0.10", "out-pods"),
            member("out-2", "127.66.0.11", "out-pods", ready=False), member("x-0", "127.66.0.12", "no-such-service"),
            pod("mail", "plain", "127.66.0.13", {"app": "out"})]
    names = pod_names([service("mail", "out-pods", {"app": "out"})], pods)
    assert names == {"out-0.out-pods.mail.svc": "127.66.0.9", "out-1.out-pods.mail.svc": "127.66.0.10"}
    assert hosts_lines({}, "mail", names) == [
        "127.66.0.9\tout-0.out-pods.mail.svc.cluster.local out-0.out-pods.mail.svc",
        "127.66.0.10\tout-1.out-pods.mail.svc.cluster.local out-1.out-pods.mail.svc"]
