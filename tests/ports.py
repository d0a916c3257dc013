"""Free ports for the test servers: below the kernel's ephemeral range, and never the same one twice.

Binding port 0 and closing hands out an ephemeral port, which the kernel may give to an outgoing
connection's source port (or to the next port-0 bind) before the server binds it: the MTA then
failed with "address already in use". Ports below the ephemeral range are never chosen by the
kernel on its own, and each one is handed out once per session.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

_handed: set[tuple[str, int]] = set()
"""(host, port) already handed out in this session."""


def _ephemeral_low() -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def _bindable(host: str, port: int, kind: int) -> bool:
    with socket.socket(socket.AF_INET, kind) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str, udp: bool = False) -> int:
    """A TCP port (and UDP too with `udp`) free on `host` now, not handed out before in this session."""
    low = _ephemeral_low()
    for _ in range(2000):
        port = random.randint(min(10000, low - 1000), low - 1)
        if (host, port) in _handed or not _bindable(host, port, socket.SOCK_STREAM):
            continue
        if udp and not _bindable(host, port, socket.SOCK_DGRAM):
            continue
        _handed.add((host, port))
        return port
    raise RuntimeError(f"no free port on {host}")
