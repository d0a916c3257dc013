"""Operator at scale: apply → ``Ready=True`` latency and peak RSS with 200 SmtpServers and 1,000 Tenants.

One file over 500 lines because it is one script: set-up, load, audit counting and the report read
top to bottom as the run does.

A private control plane (fresh temp state dir, purged at the end) gets the CRDs; the operator runs
as a subprocess (``smtp-infra operator run --kubeconfig …``) exactly as a user would start it. The
bench then creates:

* IpPools without a WarmupPlan, one /24 each (a pool holds at most a /24), enough for every replica;
* ``--tenants`` Tenants, labelled into ``--groups`` groups;
* ``--servers`` SmtpServers (replicas 1, an image kwok fakes — not ``smtp-infra/…`` — a TLS Secret,
  an ed25519 DKIM key, a tenantSelector picking one group, so each config holds tenants/groups tenants).

Objects are created by a small thread pool, all at once or ``--rate`` per second; watches record
when each object first reports ``Ready=True``. The anchor is kwok itself: for every MTA pod the
bench records pod seen → pod Ready, so ``server_beyond_kwok`` is apply → Ready minus the pod's own
start. It also splits each server's latency: apply → StatefulSet (the operator), StatefulSet → pod
(kube-controller-manager), pod seen → Ready (scheduler, volume binding, kwok), pod Ready → server
Ready (the operator); ``operator_share`` is the first plus the last. The CPU seconds each process
used during the server phase show who the machine was busy with.
Peak RSS is the operator's VmHWM (sampled VmRSS as a cross-check); its RSS before the first Tenant
and after the last one is Ready says what the floor, the tenants and the servers each take. Spool
claims are bound by pre-created PersistentVolumes (nothing provisions volumes here). Last line: JSON.

    .venv/bin/python bench/operator_scale.py [--servers 200] [--tenants 1000] [--groups 20] [--rate 2]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from smtpinfra_kube import Client, KubeConfig

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION = "smtpinfra.com", "v1alpha1"
NAMESPACE = "bench"
IMAGE = "registry.example/mta:bench"
TLS_SECRET = "bench-tls"
SPOOL_SIZE = "1Gi"
POOL_CAPACITY = 256


class Timeline:
    """First time each key reached a state, on one monotonic clock shared by all threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.times: dict[str, float] = {}

    def mark(self, key: str, at: float | None = None) -> None:
        with self._lock:
            self.times.setdefault(key, time.monotonic() if at is None else at)

    def __contains__(self, key: str) -> bool:
        return key in self.times

    def get(self, key: str) -> float | None:
        return self.times.get(key)


def is_ready(obj: dict[str, Any]) -> bool:
    """Ready=True on a custom resource (metav1.Condition) or a pod."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


class RssSampler(threading.Thread):
    """Samples a process's VmRSS; the kernel's VmHWM is read at the end for the true peak."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak_rss_kb = 0
        self.hwm_kb = 0
        self.stop = threading.Event()

    def read(self) -> int:
        """Take a sample; the VmRSS it read (0 when the process is gone)."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return 0
        fields = dict(line.split(":", 1) for line in text.splitlines() if line.startswith(("VmRSS:", "VmHWM:")))
        rss, hwm = (int(fields.get(k, "0 kB").split()[0]) for k in ("VmRSS", "VmHWM"))
        self.peak_rss_kb, self.hwm_kb = max(self.peak_rss_kb, rss), max(self.hwm_kb, hwm)
        return rss

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.read()


def cpu_seconds(marker: str, extra: dict[str, int]) -> dict[str, float]:
    """CPU time (user + system, its own and its waited-for children's) so far of each process whose
    command line mentions `marker` (the control plane's processes all name the state dir), plus the
    named `extra` pids."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = next((n for n, pid in extra.items() if pid == int(proc.name)), None)
        if name is None and any(marker.encode() in a for a in argv):
            name = Path(argv[0].decode(errors="replace")).name
        if name is not None:
            # user + system, with the children it has waited for (the operator's openssl runs)
            found[name] = found.get(name, 0.0) + sum(int(f) for f in fields[11:15]) / tick
    return found


def api_requests(cp: Any) -> dict[tuple[str, str, str], float]:
    """kube-apiserver's own request counts by (client, verb, resource), from its /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    counts: dict[tuple[str, str, str], float] = {}
    text = cp.kubectl("get", "--raw", "/metrics").stdout
    for family in text_string_to_metric_families(text):
        if family.name != "apiserver_request":
            continue
        for sample in family.samples:
            if sample.name == "apiserver_request_total":
                key = (sample.labels.get("component", ""), sample.labels.get("verb", ""),
                       sample.labels.get("resource", "") + (f"/{sub}" if (sub := sample.labels.get("subresource"))
                                                            else ""))
                counts[key] = counts.get(key, 0.0) + sample.value
    return counts


OPERATOR_AGENTS = ("smtp-infra-operator", "kopf/")
"""User agents of the operator's requests: its own client and Kopf's."""
READ_VERBS = frozenset({"get", "list"})
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


def audit_offset(cp: Any) -> int:
    """Where the API server's audit log ends now (0 when there is none)."""
    path = cp.audit_log
    return path.stat().st_size if path is not None and path.exists() else 0


def operator_requests(cp: Any, offset: int) -> tuple[int, int, dict[str, int]]:
    """The operator's reads and writes in the audit log since `offset`, and the counts per verb and resource.

    Counts of requests, not their timing: they do not depend on how loaded the machine is. Watches
    are neither (one per informer for the whole run); Kopf's peering keep-alives are left out.
    """
    path = cp.audit_log
    if path is None or not path.exists():
        return 0, 0, {}
    reads = writes = 0
    by_kind: dict[str, int] = {}
    with path.open("rb") as fh:
        fh.seek(offset)
        for line in fh:
            event = json.loads(line)
            if not str(event.get("userAgent", "")).startswith(OPERATOR_AGENTS):
                continue
            verb = event.get("verb", "")
            ref = event.get("objectRef") or {}
            resource = ref.get("resource", "") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            if resource == "clusterkopfpeerings":
                continue
            if verb in READ_VERBS:
                reads += 1
            elif verb in WRITE_VERBS:
                writes += 1
            else:
                continue
            by_kind[f"{verb} {resource}"] = by_kind.get(f"{verb} {resource}", 0) + 1
    return reads, writes, by_kind


def event_sources(cp: Any) -> list[tuple[int, str]]:
    """Events in the cluster by reporting component and reason, with their counts (repeats included)."""
    listing = json.loads(cp.kubectl("get", "events", "-A", "-o", "json").stdout)
    totals: dict[str, int] = {}
    for event in listing["items"]:
        source = event.get("reportingComponent") or (event.get("source") or {}).get("component") or "?"
        key = f"{source}/{event.get('reason')}"
        totals[key] = totals.get(key, 0) + int(event.get("count") or 1)
    return sorted(((n, k) for k, n in totals.items()), reverse=True)


def quantile(values: list[float], q: float) -> float:
    """Nearest-rank quantile (q in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<34} (none)"
    return (f"{name:<34} n={len(values):<5} p50={quantile(values, .5):7.3f}s  p95={quantile(values, .95):7.3f}s  "
            f"max={max(values):7.3f}s  mean={statistics.fmean(values):7.3f}s")


def create_all(bodies: Iterable[tuple[str, Callable[[], Any]]], applied: Timeline, workers: int,
               rate: float = 0.0) -> None:
    """Run each create call in a small pool, recording the moment just before each call.

    With `rate`, the i-th call starts no earlier than i/rate seconds after the first (a steady
    stream of applies, as a GitOps sync of many objects sends them); without, as fast as the pool goes.
    """
    start = time.monotonic()

    def one(indexed: tuple[int, tuple[str, Callable[[], Any]]]) -> None:
        index, (key, call) = indexed
        if rate > 0:
            time.sleep(max(0.0, start + index / rate - time.monotonic()))
        applied.mark(key)
        call()

    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(one, enumerate(bodies)):
            pass


def wait_all(keys: list[str], ready: Timeline, timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(k in ready for k in keys):
            return True
        time.sleep(0.2)
    missing = [k for k in keys if k not in ready]
    print(f"!! {len(missing)} {what} not Ready after {timeout:.0f}s, e.g. {missing[:5]}", flush=True)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--groups", type=int, default=20, help="tenant label groups; each server selects one")
    parser.add_argument("--workers", type=int, default=8, help="client threads creating objects")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for each phase")
    parser.add_argument("--rate", type=float, default=0.0,
                        help="SmtpServers applied per second (default: all at once, as fast as --workers go)")
    parser.add_argument("--keep", action="store_true", help="keep the state dir (and print it) for inspection")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT / "testenv"))
    from smtpinfra_testenv.controlplane import down, up

    state_dir = Path(tempfile.mkdtemp(prefix="smtp-infra-bench-"))
    operator: subprocess.Popen[bytes] | None = None
    kube: Client | None = None
    try:
        t0 = time.monotonic()
        cp = up(state_dir / "cp")
        print(f"control plane up in {time.monotonic() - t0:.1f}s ({state_dir})", flush=True)
        crd_dir = ROOT / "crds"
        cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd_dir))
        cp.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                   *[f"crd/{p.stem.split('_', 1)[1]}.smtpinfra.com" for p in sorted(crd_dir.glob("*.yaml"))])

        # The bench's own client (its user agent is not the operator's, so the audit log tells them apart).
        kube = Client(KubeConfig.from_kubeconfig(cp.kubeconfig), user_agent="smtp-infra-bench",
                      connections=max(args.workers, 4) + 4)

        def create(path: str, body: dict[str, Any]) -> Any:
            return kube.request("POST", path, body=body)

        # Fixtures the servers refer to: namespace, TLS Secret, one pre-bound PV per spool claim.
        create("/api/v1/namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        create(f"/api/v1/namespaces/{NAMESPACE}/secrets", {
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": TLS_SECRET}, "type": "kubernetes.io/tls",
            "stringData": {"tls.crt": "bench", "tls.key": "bench"}})
        servers = [f"mta-{i:04d}" for i in range(args.servers)]
        sts_names = {s: f"{s}" for s in servers}
        try:
            sys.path.insert(0, str(ROOT / "operator"))
            from smtpinfra_operator.builders.workload import statefulset_name
            sts_names = {s: statefulset_name(s) for s in servers}
        except ImportError:
            pass
        for server in servers:
            create("/api/v1/persistentvolumes", {
                "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"bench-{server}"},
                "spec": {"capacity": {"storage": SPOOL_SIZE}, "accessModes": ["ReadWriteOnce"],
                         "hostPath": {"path": f"/tmp/bench-pv/{server}"}, "storageClassName": "",
                         "persistentVolumeReclaimPolicy": "Retain",
                         "claimRef": {"namespace": NAMESPACE, "name": f"spool-{sts_names[server]}-0"}}})

        # Watches first, so no transition is missed.
        server_ready, tenant_ready, pool_ready = Timeline(), Timeline(), Timeline()
        pod_seen, pod_ready, sts_seen = Timeline(), Timeline(), Timeline()

        def on_custom(timeline: Timeline) -> Callable[[str, dict[str, Any]], None]:
            def handle(kind: str, obj: dict[str, Any]) -> None:
                if kind != "DELETED" and is_ready(obj):
                    timeline.mark(obj["metadata"]["name"])
            return handle

        def on_pod(kind: str, obj: dict[str, Any]) -> None:
            if obj["metadata"].get("namespace") != NAMESPACE:
                return
            name = obj["metadata"]["name"]
            pod_seen.mark(name)
            if kind != "DELETED" and is_ready(obj):
                pod_ready.mark(name)

        def on_statefulset(kind: str, obj: dict[str, Any]) -> None:
            if obj["metadata"].get("namespace") == NAMESPACE:
                sts_seen.mark(obj["metadata"]["name"])

        kube.watch_cached("apps/v1", "StatefulSet", on_statefulset)
        kube.watch_cached(f"{GROUP}/{VERSION}", "SmtpServer", on_custom(server_ready))
        kube.watch_cached(f"{GROUP}/{VERSION}", "Tenant", on_custom(tenant_ready))
        kube.watch_cached(f"{GROUP}/{VERSION}", "IpPool", on_custom(pool_ready))
        kube.watch_cached("v1", "Pod", on_pod)

        log_path = state_dir / "operator.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        operator = subprocess.Popen(
            [sys.executable, "-m", "smtpinfra_cli", "operator", "run", "--kubeconfig", str(cp.kubeconfig)],
            stdout=log_path.open("wb"), stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        operator_started = time.monotonic()
        sampler = RssSampler(operator.pid)
        sampler.start()
        time.sleep(1.0)

        # Pools: enough /24s for every replica.
        pools = [f"bench-pool-{i}" for i in range(max(1, math.ceil(args.servers / (POOL_CAPACITY - 6))))]
        for i, pool in enumerate(pools):
            create(f"/apis/{GROUP}/{VERSION}/ippools", {
                "apiVersion": f"{GROUP}/{VERSION}", "kind": "IpPool", "metadata": {"name": pool},
                "spec": {"addresses": [f"127.{100 + i // 250}.{i % 250}.0/24"],
                         "ptrTemplate": "mta-{index}.bench.example.test"}})
        wait_all(pools, pool_ready, args.timeout, "IpPools")
        rss_start_mb = sampler.read() / 1024  # started, pools Ready: no tenant or server yet

        # Tenants.
        tenants = [f"tenant-{i:05d}" for i in range(args.tenants)]
        tenant_applied = Timeline()

        def tenant_call(i: int, name: str) -> tuple[str, Callable[[], Any]]:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Tenant",
                    "metadata": {"name": name, "labels": {"bench.smtpinfra.com/group": f"g{i % args.groups}"}},
                    "spec": {"displayName": f"Tenant {i}", "senderDomains": [f"t{i}.bench.example.test"],
                             "quotas": {"perHour": 1000, "perDay": 10000}}}
            return name, lambda: create(f"/apis/{GROUP}/{VERSION}/tenants", body)

        t_tenants = time.monotonic()
        create_all([tenant_call(i, n) for i, n in enumerate(tenants)], tenant_applied, args.workers)
        created_in = time.monotonic() - t_tenants
        wait_all(tenants, tenant_ready, args.timeout, "Tenants")
        rss_tenants_mb = sampler.read() / 1024
        print(f"{args.tenants} tenants created in {created_in:.1f}s, all Ready after "
              f"{time.monotonic() - t_tenants:.1f}s; operator RSS {rss_start_mb:.0f} MB before them, "
              f"{rss_tenants_mb:.0f} MB now", flush=True)

        # Servers.
        server_applied = Timeline()

        def server_call(i: int, name: str) -> tuple[str, Callable[[], Any]]:
            body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": "SmtpServer",
                    "metadata": {"name": name, "namespace": NAMESPACE},
                    "spec": {"hostname": f"{name}.bench.example.test", "replicas": 1,
                             "ipPools": [pools[i % len(pools)]], "image": IMAGE,
                             "returnPathDomain": "bounces.bench.example.test",
                             "tls": {"secretName": TLS_SECRET},
                             "dkim": {"keys": [{"domain": f"{name}.bench.example.test", "selector": "b1",
                                                "algorithm": "ed25519-sha256"}]},
                             "tenantSelector": {"matchLabels": {"bench.smtpinfra.com/group": f"g{i % args.groups}"}},
                             "spool": {"size": SPOOL_SIZE}}}
            return name, lambda: create(f"/apis/{GROUP}/{VERSION}/namespaces/{NAMESPACE}/smtpservers", body)

        t_servers = time.monotonic()
        cpu_before = cpu_seconds(str(state_dir), {"operator": operator.pid, "bench": os.getpid()})
        requests_before = api_requests(cp)
        audit_before = audit_offset(cp)
        create_all([server_call(i, n) for i, n in enumerate(servers)], server_applied, args.workers, args.rate)
        created_in = time.monotonic() - t_servers
        wait_all(servers, server_ready, args.timeout, "SmtpServers")
        print(f"{args.servers} servers created in {created_in:.1f}s, all Ready after "
              f"{time.monotonic() - t_servers:.1f}s", flush=True)
        cpu_used = {k: v - cpu_before.get(k, 0.0) for k, v in
                    cpu_seconds(str(state_dir), {"operator": operator.pid, "bench": os.getpid()}).items()}
        server_phase = time.monotonic() - t_servers
        requests_after = api_requests(cp)
        reads, writes, operator_made = operator_requests(cp, audit_before)
        operator_cpu_total = cpu_seconds(str(state_dir), {"operator": operator.pid}).get("operator", math.nan)
        events = event_sources(cp)
        time.sleep(2.0)  # let the last status writes and events settle before reading the peak
        sampler.read()
        sampler.stop.set()

        # Figures.
        def latencies(applied: Timeline, ready: Timeline, keys: list[str]) -> list[float]:
            return [ready.times[k] - applied.times[k] for k in keys if k in ready and k in applied]

        server_lat = latencies(server_applied, server_ready, servers)
        tenant_lat = latencies(tenant_applied, tenant_ready, tenants)
        pods = {s: f"{sts_names[s]}-0" for s in servers}
        kwok_lat = [pod_ready.times[p] - pod_seen.times[p] for p in pods.values() if p in pod_ready and p in pod_seen]
        beyond, after_pod, to_sts, sts_to_pod, operator_share = [], [], [], [], []
        for server, pod in pods.items():
            if server in server_ready and server in server_applied and pod in pod_ready and pod in pod_seen:
                total = server_ready.times[server] - server_applied.times[server]
                beyond.append(total - (pod_ready.times[pod] - pod_seen.times[pod]))
                after_pod.append(server_ready.times[server] - pod_ready.times[pod])
                sts = sts_names[server]
                if sts in sts_seen:
                    to_sts.append(sts_seen.times[sts] - server_applied.times[server])
                    sts_to_pod.append(pod_seen.times[pod] - sts_seen.times[sts])
                    operator_share.append(to_sts[-1] + max(0.0, after_pod[-1]))
        peak_mb = max(sampler.hwm_kb, sampler.peak_rss_kb) / 1024
        log_text = log_path.read_text(errors="replace")
        print()
        print(summary("tenant apply -> Ready", tenant_lat))
        print(summary("server apply -> Ready", server_lat))
        print(summary("  apply -> StatefulSet (operator)", to_sts))
        print(summary("  StatefulSet -> pod (controllers)", sts_to_pod))
        print(summary("  pod seen -> Ready (kwok)", kwok_lat))
        print(summary("  pod Ready -> server Ready", after_pod))
        print(summary("server Ready beyond kwok pod start", beyond))
        print(summary("operator's share", operator_share))
        slowest = sorted(((server_ready.times[s] - server_applied.times[s], s) for s in servers
                          if s in server_ready and s in server_applied), reverse=True)[:5]
        print("slowest servers (apply → Ready, applied at seconds after the operator started): " + ", ".join(
            f"{s} {lat:.1f}s @{server_applied.times[s] - operator_started:.0f}s" for lat, s in slowest))
        cores = os.cpu_count() or 1
        print(f"CPU seconds in the {server_phase:.1f}s server phase ({cores} cores: "
              f"{cores * server_phase:.0f}s available): "
              + ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu_used.items(), key=lambda kv: -kv[1])))
        made = {k: v - requests_before.get(k, 0.0) for k, v in requests_after.items()}
        made = {k: v for k, v in made.items() if v >= args.servers / 2 and k[1] not in ("WATCH", "CONNECT")}
        print(f"API requests in the server phase ({sum(made.values()):.0f} of the kinds with at least "
              f"{args.servers // 2}): " + ", ".join(f"{verb} {resource} {n:.0f}" for (_, verb, resource), n
                                                   in sorted(made.items(), key=lambda kv: -kv[1])))
        print(f"operator requests until every server was Ready (audit log): {reads} reads, {writes} writes; "
              + ", ".join(f"{k} {n}" for k, n in sorted(operator_made.items(), key=lambda kv: -kv[1])[:12]))
        print("Events (all phases) by component/reason: " + ", ".join(f"{k} {n}" for n, k in events[:10]))
        print(f"operator peak RSS (VmHWM) {sampler.hwm_kb / 1024:.1f} MB, sampled VmRSS max "
              f"{sampler.peak_rss_kb / 1024:.1f} MB; log {len(log_text.splitlines())} lines, "
              f"{log_text.count('Traceback')} tracebacks")
        result = {
            "servers": args.servers, "tenants": args.tenants, "rate": args.rate or None,
            "server_ready_p50_s": round(quantile(server_lat, .5), 3),
            "server_ready_p95_s": round(quantile(server_lat, .95), 3),
            "server_ready_max_s": round(max(server_lat, default=math.nan), 3),
            "server_beyond_kwok_p50_s": round(quantile(beyond, .5), 3),
            "server_beyond_kwok_p95_s": round(quantile(beyond, .95), 3),
            "tenant_ready_p50_s": round(quantile(tenant_lat, .5), 3),
            "tenant_ready_p95_s": round(quantile(tenant_lat, .95), 3),
            "operator_share_p50_s": round(quantile(operator_share, .5), 3),
            "operator_share_p95_s": round(quantile(operator_share, .95), 3),
            "kwok_pod_ready_p50_s": round(quantile(kwok_lat, .5), 3),
            "kwok_pod_ready_p95_s": round(quantile(kwok_lat, .95), 3),
            "operator_peak_rss_mb": round(peak_mb, 1),
            "operator_rss_start_mb": round(rss_start_mb, 1), "operator_rss_after_tenants_mb": round(rss_tenants_mb, 1),
            "servers_ready": len(server_lat), "tenants_ready": len(tenant_lat),
            # Counts, independent of machine load: the operator's API requests per SmtpServer from its
            # creation until all were Ready (audit log), and its CPU per object over the whole run.
            "api_reads_per_server": round(reads / args.servers, 2) if args.servers else None,
            "api_writes_per_server": round(writes / args.servers, 2) if args.servers else None,
            "operator_cpu_ms_per_object": round(1000 * operator_cpu_total / (args.servers + args.tenants), 1)
            if args.servers + args.tenants else None,
        }
        print(json.dumps({k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result.items()}))
        return 0 if len(server_lat) == args.servers and len(tenant_lat) == args.tenants else 1
    finally:
        if kube is not None:
            kube.close()
        if operator is not None and operator.poll() is None:
            operator.terminate()
            try:
                operator.wait(timeout=20)
            except subprocess.TimeoutExpired:
                operator.kill()
                operator.wait()
        try:
            down(state_dir / "cp", purge=True)
        finally:
            if args.keep:
                print(f"kept {state_dir}", file=sys.stderr)
            else:
                shutil.rmtree(state_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
