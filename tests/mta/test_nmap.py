"""nmap's ``smtp-open-relay`` NSE script against every listener of a running MTA.

The script's portrule only fires on ports 25, 465 and 587 (without a slow ``-sV`` scan), so the MTA
listens on those real ports on an otherwise unused loopback address. As a control, the same scan of
``smtp-sink`` (which accepts anything) must report an open relay, so the parsing cannot pass vacuously.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from .conftest import Sink, base_config

pytestmark = pytest.mark.mta

PORTS = {"inbound": 25, "submission": 587, "implicit_tls": 465}


def _free_address() -> str:
    """A 127.0.61.x address where ports 25, 465 and 587 are all free."""
    for _ in range(50):
        addr = f"127.0.61.{random.randint(2, 254)}"
        socks = []
        try:
            for port in PORTS.values():
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind((addr, port))
            return addr
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no loopback address with ports 25/465/587 free")


def nmap_open_relay(address: str, ports: list[int]) -> dict[int, str]:
    """Run the smtp-open-relay script; returns each port's script output (empty when it did not run)."""
    exe = shutil.which("nmap")
    if exe is None:
        pytest.fail("nmap is not installed: run scripts/install-system-deps.sh")
    r = subprocess.run(
        [exe, "-Pn", "-n", "-sT", "-p", ",".join(map(str, ports)), "--script", "smtp-open-relay",
         "--script-args", "smtp-open-relay.domain=example.test", "-oX", "-", address],
        capture_output=True, text=True, timeout=120, check=True,
    )
    out: dict[int, str] = {}
    for port in ET.fromstring(r.stdout).iter("port"):
        script = port.find("script[@id='smtp-open-relay']")
        out[int(port.get("portid", "0"))] = script.get("output", "") if script is not None else ""
    return out


def test_nmap_finds_no_open_relay_on_any_listener(tmp_path: Path, tls_files: Any, password_hashes: dict[str, str],
                                                  mta_factory: Any, sink_factory: Any) -> None:
    addr = _free_address()
    cfg = base_config(tmp_path, tls_files, password_hashes)
    for kind, port in PORTS.items():
        cfg["listeners"][kind]["bind"] = [addr]
        cfg["listeners"][kind]["port"] = port
    mta = mta_factory(cfg)
    results = nmap_open_relay(addr, list(PORTS.values()))
    mta.stop()
    assert set(results) == set(PORTS.values())
    for port, output in results.items():
        assert output, f"smtp-open-relay did not run on port {port}"
        assert "Server is an open relay" not in output, (port, output)
        assert "isn't an open relay" in output or "doesn't seem to be an open relay" in output, (port, output)
    # port 25 answers the relay attempts itself; the submission ports refuse before that (AUTH first)
    assert "all tests failed" in results[25]
    assert "authentication needed" in results[587]
    assert "authentication needed" in results[465]

    # Control: a server that accepts every recipient is reported as an open relay by the same parsing.
    sink: Sink = sink_factory(port=25, addr=addr)
    control = nmap_open_relay(addr, [25])
    sink.stop()
    assert "Server is an open relay" in control[25], control
