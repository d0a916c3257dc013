"""Process supervision: start components detached, tell our pids from reused ones, stop them; free ports."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import time
from pathlib import Path

from .layout import ControlPlaneError

log = logging.getLogger(__name__)
def proc_start_time(pid: int) -> int | None:
    """Kernel start time of a live (non-zombie) process, used to tell our pid from a reused one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # exited; only the zombie entry is left
        return None
    return int(fields[19])


def alive(record: dict[str, int] | None) -> bool:
    """True when the recorded process still runs (same pid *and* same start time)."""
    return record is not None and proc_start_time(record["pid"]) == record["start"]


def spawn(argv: list[str], log_file: Path, env: dict[str, str]) -> dict[str, int]:
    """Start ``argv`` fully detached and return its pid record.

    The component is started by a throwaway ``sh`` in a new session, so it is re-parented away
    from us: it survives the CLI exiting, never becomes our zombie, and no Popen object is left
    running.
    """
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as fh:
        fh.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n")
    script = 'log=$1; shift; "$@" >>"$log" 2>&1 </dev/null & echo $!'
    out = subprocess.run(
        ["/bin/sh", "-c", script, "sh", str(log_file), *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        start_new_session=True,
        check=True,
    )
    pid = int(out.stdout.strip())
    start = None
    for _ in range(100):
        start = proc_start_time(pid)
        if start is not None:
            break
        time.sleep(0.01)
    if start is None:
        raise ControlPlaneError(f"{argv[0]} exited immediately:\n{tail(log_file)}")
    return {"pid": pid, "start": start}


def terminate(records: dict[str, dict[str, int]], names: list[str], grace: float) -> None:
    """SIGTERM the named processes one by one (in the given order), then SIGKILL leftovers."""
    for name in names:
        rec = records.get(name)
        if not rec or not alive(rec):
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(rec["pid"], signal.SIGTERM)
        deadline = time.monotonic() + grace
        while alive(rec) and time.monotonic() < deadline:
            time.sleep(0.05)
    for name in names:
        rec = records.get(name)
        if rec and alive(rec):
            log.warning("%s (pid %d) ignored SIGTERM; killing it", name, rec["pid"])
            with contextlib.suppress(ProcessLookupError):
                os.kill(rec["pid"], signal.SIGKILL)
            deadline = time.monotonic() + 5
            while alive(rec) and time.monotonic() < deadline:
                time.sleep(0.05)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


# Ports


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Same option the Go servers use, so a TIME_WAIT leftover does not count as "busy".
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(names: list[str], keep: dict[str, int]) -> dict[str, int]:
    """Keep the previous ports when still free (stable kubeconfigs), else pick new free ones.

    New ports come from below the kernel's ephemeral range so an outgoing connection cannot
    occupy one of them while the control plane is down.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    taken: set[int] = set()
    result: dict[str, int] = {}
    for name in names:
        port = keep.get(name)
        if port is None or port in taken or not port_free(port):
            for _ in range(1000):
                port = random.randint(min(20000, low - 1000), low - 1)
                if port not in taken and port_free(port):
                    break
            else:
                raise ControlPlaneError("no free loopback port found")
        taken.add(port)
        result[name] = port
    return result

