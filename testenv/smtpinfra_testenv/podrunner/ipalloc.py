"""Pod IPs from the runner's loopback CIDR, stable per namespace/name."""

from __future__ import annotations

import hashlib
import ipaddress
import threading

DEFAULT_POD_CIDR = "127.66.0.0/16"


class IpAllocator:
    """Pod IPs from the runner's loopback CIDR, derived from namespace/name (stable across recreation).

    A released address stays reserved for the pod name that had it, so a pod recreated under the
    same name (a StatefulSet's) gets it back even when other pods were started in between; other
    names get it only when nothing else is free.
    """

    def __init__(self, cidr: str) -> None:
        self.net = ipaddress.IPv4Network(cidr)
        self.used: dict[str, tuple[str, str]] = {}  # ip -> (namespace/name, uid)
        self.last: dict[str, str] = {}  # namespace/name -> the ip it had last
        self.lock = threading.Lock()

    def allocate(self, ns_name: str, uid: str, preferred: str | None = None) -> str:
        with self.lock:
            for ip, (_who, owner_uid) in self.used.items():
                if owner_uid == uid:
                    return ip
            reserved = {ip for name, ip in self.last.items() if name != ns_name}
            for wanted in (preferred, self.last.get(ns_name)):
                if wanted and ipaddress.IPv4Address(wanted) in self.net and wanted not in self.used:
                    return self._take(wanted, ns_name, uid)
            size = self.net.num_addresses
            start = int.from_bytes(hashlib.sha256(ns_name.encode()).digest()[:8], "big") % size
            for avoid in (reserved, set()):
                for i in range(size):
                    addr = self.net[(start + i) % size]
                    ip = str(addr)
                    if int(addr) & 0xFF in (0, 255) or ip in self.used or ip in avoid:
                        continue
                    return self._take(ip, ns_name, uid)
        raise RuntimeError(f"pod CIDR {self.net} exhausted")

    def _take(self, ip: str, ns_name: str, uid: str) -> str:
        self.used[ip] = (ns_name, uid)
        kept = self.last.get(ns_name)
        if kept is None or self.used.get(kept, ("", ""))[0] != ns_name:  # not a second live pod of the name
            self.last[ns_name] = ip
        return ip

    def release(self, uid: str) -> None:
        with self.lock:
            for ip in [ip for ip, (_w, u) in self.used.items() if u == uid]:
                del self.used[ip]
