"""The local pod runner's pure parts, without a cluster: `$(VAR)` expansion, the atomic volume
writer, pod IP allocation and the kwok stages that leave our images to the runner."""

from __future__ import annotations

from pathlib import Path

import yaml

from smtpinfra_testenv import podrunner
from smtpinfra_testenv.controlplane import KWOK_STAGES


def test_expand_matches_the_kubelet() -> None:
    env = {"A": "x", "B": "$(A)"}
    assert podrunner.expand("$(A)-$(B)", env) == "x-$(A)"  # no recursive expansion
    assert podrunner.expand("$$(A) $$ $(NOPE) $(A", env) == "$(A) $ $(NOPE) $(A"
    assert podrunner.expand("a$b$", env) == "a$b$"


def test_atomic_writer_layout(tmp_path: Path) -> None:
    assert podrunner.write_payload(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)})
    assert (tmp_path / "..data").is_symlink()
    assert str((tmp_path / "a").readlink()) == "..data/a"
    assert (tmp_path / "dir" / "b").read_bytes() == b"2"
    first = str((tmp_path / "..data").readlink())
    assert not podrunner.write_payload(tmp_path, {"a": (b"1", 0o644), "dir/b": (b"2", 0o600)})
    assert podrunner.write_payload(tmp_path, {"a": (b"new", 0o644)})
    assert str((tmp_path / "..data").readlink()) != first
    assert not (tmp_path / first).exists()
    assert (tmp_path / "a").read_text() == "new"
    assert not (tmp_path / "dir").exists()


def test_ip_allocation_is_stable_per_name() -> None:
    alloc = podrunner.IpAllocator("127.66.0.0/16")
    ip = alloc.allocate("ns/web-0", "uid-1")
    assert alloc.allocate("ns/web-0", "uid-1") == ip
    other = alloc.allocate("ns/web-0", "uid-2")  # a second live pod of that name gets another IP
    assert other != ip
    alloc.release("uid-1")
    alloc.release("uid-2")
    assert alloc.allocate("ns/web-0", "uid-3") == ip  # recreated: same IP again


def test_a_released_ip_is_kept_for_its_name_while_others_are_free() -> None:
    alloc = podrunner.IpAllocator("127.66.0.0/29")  # seven usable addresses: names collide
    ip = alloc.allocate("ns/db-0", "uid-1")
    alloc.release("uid-1")  # db-0 is being recreated; other pods start meanwhile
    others = {alloc.allocate(f"ns/other-{i}", f"o-{i}") for i in range(6)}
    assert ip not in others
    assert alloc.allocate("ns/db-0", "uid-2") == ip
    alloc.release("uid-2")
    assert alloc.allocate("ns/last", "l-1") == ip, "with nothing else free, a reserved address is still handed out"


def test_kwok_stages_skip_our_images() -> None:
    stages = list(yaml.safe_load_all(KWOK_STAGES.read_text()))
    expr = podrunner.kwok_image_expression(podrunner.DEFAULT_IMAGE_PREFIXES)
    pod_stages = [s for s in stages if s["spec"]["resourceRef"]["kind"] == "Pod"]
    assert pod_stages
    for stage in pod_stages:
        keys = {e["key"]: e for e in stage["spec"]["selector"]["matchExpressions"]}
        assert keys[expr]["operator"] == "NotIn" and keys[expr]["values"] == ["true"], stage["metadata"]["name"]
    assert podrunner.is_local_pod({"spec": {"containers": [{"image": "smtp-infra/mta:0.1.0"}]}}, ("smtp-infra/",))
    assert not podrunner.is_local_pod({"spec": {"containers": [{"image": "busybox"}]}}, ("smtp-infra/",))


