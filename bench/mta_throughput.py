"""End-to-end relay throughput: ``smtp-source`` -> MTA -> ``smtp-sink``, ours against Postfix, same run.

Both MTAs receive the same load from Postfix's ``smtp-source`` (20 parallel sessions, bodies of each
``--sizes`` entry, one message per connection, as a fleet of clients would send) for one domain they
relay without AUTH, and forward it over SMTP to an ``smtp-sink`` acting as the remote MX. A side's clock starts when
``smtp-source`` starts and stops when the sink has counted every message, so the rate is end to end:
accepted (fsynced before 250), queued, delivered.

* ours: ``python -m smtpinfra_mta serve`` with the port-25 listener relaying ``sink.bench`` (a relay domain)
  to the sink through a static route, spool fsync on (the default), receiving and delivering in two
  processes (``delivery.separate_process``, as the operator renders it for the pods; ``--single-process``
  runs one);
* Postfix: a private instance (own config_directory, queue_directory and master under a temp dir on the
  same disk) with ``relay_domains = sink.bench`` and a ``transport_maps`` route to the same sink, default
  fsync behaviour.

Everything listens on 127.0.77.x only. All processes started here are stopped at the end, also on errors.
The same load is also sent from ``smtp-source`` straight into ``smtp-sink`` (the ceiling: what the load
generator and sink manage with no MTA between them), per size, in the same run.
The last line of output is JSON: ``{"ratio_min": ..., "ratios": {"1024": ..., ...}, "ceiling_share": ...,
...}``: per size the median of the per-round ratios ours/Postfix (each round runs the sides back to back),
the smallest of them, and our rate as a share of the ceiling at the smallest size (``ceiling_shares`` for
every size).
Our MTA runs at log level WARNING (``--log-level``); the private Postfix logs to syslog, which is absent here.

    .venv/bin/python bench/mta_throughput.py [--sizes 1024,20480,102400] [--messages 10000] [--sessions 20]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

MTA_ADDR = "127.0.77.10"
POSTFIX_ADDR = "127.0.77.11"
MTA_SOURCE_IP = "127.0.77.21"
POSTFIX_SOURCE_IP = "127.0.77.22"
SINK_ADDR = "127.0.77.42"
DOMAIN = "sink.bench"
SENDER = "load@source.bench"
REPO = Path(__file__).resolve().parent.parent
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5) as s:
                s.recv(512)  # read the banner so the server sees an orderly session
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"{host}:{port} did not open within {timeout}s")


class Processes:
    """Every process this benchmark starts, each in its own session, killed by its own group id at exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
        # children of a stopped leader (e.g. worker processes) share its process group
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            self.stop(p)


class Sink:
    """``smtp-sink -c``: a fast remote MX whose running counter tells how many messages have arrived."""

    READ_INTERVAL = 0.02

    def __init__(self, procs: Processes) -> None:
        self.port = free_port(SINK_ADDR)
        self.proc = procs.start([SMTP_SINK, "-u", "root", "-c", f"{SINK_ADDR}:{self.port}", "1000"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.messages = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        wait_port(SINK_ADDR, self.port)

    def _read(self) -> None:
        """Keep the latest ``mesg=`` count, waking ``READ_INTERVAL`` apart.

        smtp-sink rewrites its counter line on every SMTP event, several per message; reading and
        scanning each write took a core's noticeable share and, in campaign_send.py, the GIL from the
        sender running in this process. The pipe (64 KiB) holds far more than one interval's output.
        """
        assert self.proc.stdout is not None
        tail = b""
        while chunk := os.read(self.proc.stdout.fileno(), 1 << 20):
            tail = (tail + chunk)[-256:]
            at = tail.rfind(b"mesg=")
            if at >= 0:
                found = re.match(rb"mesg=(\d+)", tail[at:])
                if found and found.end() < len(tail) - at:  # a complete number, not one cut by the read
                    self.messages = max(self.messages, int(found.group(1)))
            time.sleep(self.READ_INTERVAL)

    def wait_for(self, n: int, timeout: float) -> float:
        """Monotonic time at which ``n`` messages had arrived (raises on timeout)."""
        deadline = time.monotonic() + timeout
        while self.messages < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {self.messages}/{n} messages reached the sink within {timeout:.0f}s")
            time.sleep(0.01)
        return time.monotonic()


def run_load(procs: Processes, host: str, port: int, messages: int, sessions: int, size: int,
             timeout: float) -> float:
    """Run smtp-source to completion; returns its duration."""
    t0 = time.monotonic()
    proc = procs.start([SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size), "-f", SENDER,
                        "-t", f"user@{DOMAIN}", "-M", "client.source.bench", f"{host}:{port}"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.stop(proc, signal.SIGKILL)
        raise TimeoutError("smtp-source did not finish in time") from None
    if proc.returncode != 0:
        raise RuntimeError(f"smtp-source failed ({proc.returncode}): {err.decode(errors='replace')[-2000:]}")
    return time.monotonic() - t0


def tree_cpu_seconds(root: int | None) -> float:
    """CPU seconds (user + system) of a process and all its descendants, the reaped ones included
    (their time is in their parent's cutime/cstime): a count that does not depend on machine load."""
    if root is None:
        return 0.0
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after the command: state ppid ... utime(11) stime(12) cutime(13) cstime(14), 0-based from state
        stats[int(entry.name)] = (int(fields[1]), sum(float(x) for x in fields[11:15]))
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(children.get(pid, []))
    return total / os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------------------- our MTA


def mta_config(work: Path, sink_port: int, listen_port: int, separate: bool, receivers: int = 1) -> dict[str, Any]:
    return {
        "hostname": "mta.bench",
        "listeners": {
            "processes": receivers,
            "submission": {"enabled": False},
            "inbound": {"bind": [MTA_ADDR], "port": listen_port, "starttls": False,
                        "domains": ["bounces.mta.bench"],
                        "relay_domains": [{"domain": DOMAIN, "pool": "bench"}]},
        },
        "limits": {"max_sessions": 1000},
        "pools": [{"name": "bench", "source_ips": [{"address": MTA_SOURCE_IP, "ehlo_name": "out.mta.bench"}]}],
        # Postfix's defaults: 20 connections per destination, connection cache reuse
        "throttling": {"rules": [{"scope": "default", "connection_limit": 20,
                                  "max_deliveries_per_connection": 1000}]},
        "delivery": {"routes": [{"domain": DOMAIN, "host": SINK_ADDR, "port": sink_port}],
                     "separate_process": separate,
                     "resolver": {"address": "127.0.77.53", "port": 53, "timeout": "1s"}},
        "spool": {"directory": str(work / "spool"), "fsync": True},
        "suppression": {"url": f"sqlite:///{work / 'suppression.db'}"},
        "http": {"bind": MTA_ADDR, "port": free_port(MTA_ADDR), "delivery_port": free_port(MTA_ADDR)},
        "bounces": {"return_path_domain": "bounces.mta.bench"},
    }


@contextlib.contextmanager
def our_mta(procs: Processes, work: Path, sink_port: int, log_level: str, separate: bool, receivers: int = 1
            ) -> Iterator[tuple[int, int | None]]:
    port = free_port(MTA_ADDR)
    cfg = mta_config(work, sink_port, port, separate, receivers)
    cfg_path = work / "mta.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(REPO / "mta-image"))
    log = (work / "mta.log").open("wb")
    proc = procs.start([sys.executable, "-m", "smtpinfra_mta", "serve", "--config", str(cfg_path),
                        "--log-level", log_level], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=work)
    try:
        wait_port(MTA_ADDR, port)
        yield port, proc.pid
    finally:
        procs.stop(proc)
        log.close()


# ----------------------------------------------------------------------------------------- Postfix

_MASTER_CF = """\
{addr}:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
"""


def postfix_main_cf(work: Path, sink_port: int) -> str:
    settings = {
        "compatibility_level": "3.6",
        "queue_directory": str(work / "queue"),
        "data_directory": str(work / "data"),
        "mail_owner": "postfix",
        "setgid_group": "postdrop",
        "myhostname": "postfix.bench",
        "mydomain": "bench",
        "mydestination": "",
        "inet_interfaces": "loopback-only",  # the smtpd entry in master.cf binds POSTFIX_ADDR
        "inet_protocols": "ipv4",
        "mynetworks": "127.0.77.0/24",
        "relay_domains": DOMAIN,
        "transport_maps": f"inline:{{{DOMAIN}=smtp:[{SINK_ADDR}]:{sink_port}}}",
        "smtp_bind_address": POSTFIX_SOURCE_IP,
        "smtpd_relay_restrictions": "reject_unauth_destination",
        "alias_maps": "",
        "alias_database": "",
        "local_recipient_maps": "",
        "smtpd_banner": "$myhostname ESMTP",
        "biff": "no",
    }
    return "".join(f"{k} = {v}\n" for k, v in settings.items())


@contextlib.contextmanager
def postfix(procs: Processes, work: Path, sink_port: int) -> Iterator[tuple[int, int | None]]:
    conf = work / "etc"
    conf.mkdir(parents=True)
    (work / "queue").mkdir()
    (work / "data").mkdir()
    shutil.chown(work / "data", "postfix", "postfix")
    port = free_port(POSTFIX_ADDR)
    (conf / "main.cf").write_text(postfix_main_cf(work, sink_port))
    (conf / "master.cf").write_text(_MASTER_CF.format(addr=POSTFIX_ADDR, port=port))

    def pf(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/sbin/postfix", "-c", str(conf), *args], capture_output=True, text=True,
                              check=check, timeout=60)

    pf("check", check=False)  # creates the queue directories with their owners
    started = pf("start", check=False)
    if started.returncode != 0:
        raise RuntimeError(f"postfix did not start: {started.stdout}{started.stderr}")
    try:
        wait_port(POSTFIX_ADDR, port)
        master: int | None = None
        with contextlib.suppress(OSError, ValueError):
            master = int((work / "queue" / "pid" / "master.pid").read_text().split()[0])
        yield port, master
    finally:
        pf("stop", check=False)
        pid_file = work / "queue" / "pid" / "master.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().split()[0])
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------- runs


def measure(procs: Processes, side: str, work: Path, args: argparse.Namespace, size: int) -> dict[str, float]:
    """One side at one size: ``mta``, ``postfix``, or ``ceiling`` (smtp-source straight into smtp-sink)."""
    work.mkdir(parents=True)
    sink = Sink(procs)
    timeout = max(120.0, args.messages / 20.0)
    try:
        server: contextlib.AbstractContextManager[tuple[int, int | None]]
        if side == "ceiling":
            server = contextlib.nullcontext((sink.port, None))
        elif side == "mta":
            server = our_mta(procs, work, sink.port, args.log_level, args.separate_process, args.receivers)
        else:
            server = postfix(procs, work, sink.port)
        host = {"mta": MTA_ADDR, "postfix": POSTFIX_ADDR, "ceiling": SINK_ADDR}[side]
        with server as (port, pid):
            cpu0 = tree_cpu_seconds(pid)
            t0 = time.monotonic()
            accept_s = run_load(procs, host, port, args.messages, args.sessions, size, timeout)
            t_end = sink.wait_for(args.messages, timeout)
            cpu = tree_cpu_seconds(pid) - cpu0
        total = t_end - t0
        out = {"msgs_per_s": round(args.messages / total, 1), "seconds": round(total, 2),
               "accept_msgs_per_s": round(args.messages / accept_s, 1)}
        if pid is not None:  # the MTA's own CPU per message (its processes, not the load generator's or sink's)
            out["cpu_ms_per_msg"] = round(cpu * 1000 / args.messages, 3)
        return out
    finally:
        procs.stop(sink.proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=10_000, help="messages per side and size (default 10000)")
    ap.add_argument("--sessions", type=int, default=20, help="parallel smtp-source sessions (default 20)")
    ap.add_argument("--sizes", default="1024", help="comma-separated message body sizes in bytes (default 1024)")
    ap.add_argument("--size", type=int, help="one body size (same as --sizes N)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate ours/Postfix this many times; report medians")
    ap.add_argument("--log-level", default="WARNING", help="MTA log level (Postfix logs to an absent syslog)")
    ap.add_argument("--only", choices=["mta", "postfix"], help="run one side only (for profiling)")
    ap.add_argument("--no-ceiling", dest="ceiling", action="store_false",
                    help="skip the direct smtp-source -> smtp-sink run that measures the load generator's ceiling")
    ap.add_argument("--receivers", type=int, default=1,
                    help="receiving processes of our MTA (listeners.processes; the operator sizes it from the "
                    "pod's CPU request: 1 up to 2 cores)")
    ap.add_argument("--single-process", dest="separate_process", action="store_false",
                    help="MTA without delivery.separate_process (the operator renders it on: receiving and "
                    "delivering in two processes, as the pods run)")
    args = ap.parse_args()
    sizes = [args.size] if args.size else [int(x) for x in args.sizes.split(",") if x.strip()]
    for exe in (SMTP_SOURCE, SMTP_SINK, "/usr/sbin/postfix"):
        if not Path(exe).exists():
            print(f"{exe} missing: run scripts/install-system-deps.sh", file=sys.stderr)
            return 2
    procs = Processes()
    base = Path(tempfile.mkdtemp(prefix="mta-bench-", dir="/var/tmp"))
    base.chmod(0o755)  # Postfix daemons run as user postfix and must reach their queue directory
    results: dict[tuple[int, str], list[dict[str, float]]] = {}
    sides = [args.only] if args.only else ["mta", "postfix"]
    if args.ceiling:
        sides.append("ceiling")
    try:
        for size in sizes:
            for rnd in range(args.rounds):
                for side in sides:
                    r = measure(procs, side, base / f"{size}-{side}-{rnd}", args, size)
                    results.setdefault((size, side), []).append(r)
                    print(json.dumps({"size": size, "round": rnd + 1, "side": side, **r}), flush=True)
    finally:
        procs.stop_all()
        shutil.rmtree(base, ignore_errors=True)
    per_size = {size: summarize(results, size, args.rounds) for size in sizes}
    for size, summary in per_size.items():
        print(json.dumps({"size": size, **summary}), flush=True)
    ratios = {str(size): s["ratio"] for size, s in per_size.items() if s["ratio"] is not None}
    shares = {str(size): s["ceiling_share"] for size, s in per_size.items() if s["ceiling_share"] is not None}
    out: dict[str, Any] = {
        "ratio_min": min(ratios.values()) if ratios else None,
        "ratios": ratios,
        # our end-to-end rate as a share of smtp-source -> smtp-sink directly, at the smallest size
        "ceiling_share": shares.get(str(min(sizes))),
        "ceiling_shares": shares,
        "mta_msgs_per_s": {str(size): s["mta_msgs_per_s"] for size, s in per_size.items()},
        "postfix_msgs_per_s": {str(size): s["postfix_msgs_per_s"] for size, s in per_size.items()},
        "ceiling_msgs_per_s": {str(size): s["ceiling_msgs_per_s"] for size, s in per_size.items()},
        # CPU milliseconds per message of each MTA's own processes: compares fairly across machine load
        "mta_cpu_ms_per_msg": {str(size): s["mta_cpu_ms_per_msg"] for size, s in per_size.items()},
        "postfix_cpu_ms_per_msg": {str(size): s["postfix_cpu_ms_per_msg"] for size, s in per_size.items()},
        "mta_separate_process": args.separate_process, "messages": args.messages, "sessions": args.sessions,
        "rounds": args.rounds, "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out), flush=True)
    return 0


def summarize(results: dict[tuple[int, str], list[dict[str, float]]], size: int, rounds: int) -> dict[str, Any]:
    """Medians for one size. Each round runs the sides back to back, so the ratio is taken per round (the
    machine's load drifts between rounds) and the median of those is reported."""

    def runs(side: str) -> list[float]:
        return [r["msgs_per_s"] for r in results.get((size, side), [])]

    def med(side: str) -> float | None:
        vals = runs(side)
        return round(statistics.median(vals), 1) if vals else None

    def cpu(side: str) -> float | None:
        vals = [r["cpu_ms_per_msg"] for r in results.get((size, side), []) if "cpu_ms_per_msg" in r]
        return round(statistics.median(vals), 3) if vals else None

    pairs = [m / p for m, p in zip(runs("mta"), runs("postfix"), strict=False) if p]
    shares = [m / c for m, c in zip(runs("mta"), runs("ceiling"), strict=False) if c]
    return {"mta_msgs_per_s": med("mta"), "postfix_msgs_per_s": med("postfix"), "ceiling_msgs_per_s": med("ceiling"),
            "ratio": round(statistics.median(pairs), 2) if pairs else None,
            "ratio_per_round": [round(x, 2) for x in pairs],
            "ceiling_share": round(statistics.median(shares), 3) if shares else None,
            "mta_cpu_ms_per_msg": cpu("mta"), "postfix_cpu_ms_per_msg": cpu("postfix"),
            "mta_runs": runs("mta"), "postfix_runs": runs("postfix"), "rounds": rounds}


if __name__ == "__main__":
    sys.exit(main())
