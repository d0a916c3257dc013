"""The blocklist monitor's whole check of 1,000 addresses in 5 zones against a local Knot, with dnsperf as the ceiling.

    scripts/isolated.sh .venv/bin/python bench/dnsbl_monitor.py [--addresses 1000] [--rounds 3]

Knot (tests/reputation/dnsbl_knot.py) serves five zones: a good list that lists every tenth
address, a clean list, one answering 127.255.255.254 for everything, one listing everything and
a keyed list. Ours: `DnsblMonitor.check` of one pool (self-tests, every address in every zone,
classification, hysteresis, quarantine decisions) plus the status the IpPool controller writes
from it (per-address fields, zone health, Degraded). The ceiling: Debian's dnsperf sends the
same 5,000 address queries to the same server (the monitor's 10 self-test queries on top are ours
alone). Prints a JSON line last: addresses, zones, seconds (best round), queries_per_s,
dnsperf_seconds (best round), ratio (ours / dnsperf).
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from prometheus_client import CollectorRegistry  # noqa: E402

from smtpinfra_api.meta import SecretKeyReference  # noqa: E402
from smtpinfra_api.v1alpha1 import IpPoolSpec  # noqa: E402
from smtpinfra_operator.reputation.dnsbl import Result, query_name  # noqa: E402
from smtpinfra_operator.reputation.dnsbl_monitor import DnsblMetrics, DnsblMonitor, system_clock  # noqa: E402
from smtpinfra_operator.reputation.dnsbl_status import address_fields, degraded, zone_fields  # noqa: E402
from tests.reputation.dnsbl_knot import CLEAN, ERRORS, EVERYTHING, GOOD, KEYED, QUERY_KEY, make_knot  # noqa: E402

ZONES = [GOOD, CLEAN, ERRORS, EVERYTHING, KEYED]
BASE = ipaddress.IPv4Address("198.18.0.0")  # RFC 2544 benchmarking range


def pool_addresses(count: int) -> list[str]:
    """`count` addresses as a pool lists them: whole /24s (254 usable each) first, then single addresses."""
    full = count // 254
    entries = [f"{BASE + 256 * i}/24" for i in range(full)]
    return entries + [str(BASE + 256 * full + 1 + i) for i in range(count - 254 * full)]


async def our_check(spec: IpPoolSpec, nameserver: str, concurrency: int) -> tuple[float, int]:
    """Seconds for one whole check plus the status computed from it; and the quarantined count."""

    async def key(_: SecretKeyReference) -> str:
        return QUERY_KEY

    monitor = DnsblMonitor(clock=system_clock, on_change=lambda _: None, metrics=DnsblMetrics(CollectorRegistry()),
                           read_secret=key, concurrency=concurrency)
    spec = spec.model_copy(update={"dnsbl": spec.dnsbl.model_copy(update={"resolver": nameserver})})
    began = time.perf_counter()
    monitor.configure("bench", spec)
    view = await monitor.check("bench")
    current = monitor.view("bench")
    assert current is not None
    config = current[0]
    status = [address_fields(config, view, a) for a in config.addresses]
    zone_fields(view)
    degraded(view)
    seconds = time.perf_counter() - began
    unknown = sum(1 for row in view.states.values() for z in row.values() if z.result is Result.UNKNOWN)
    if unknown:
        print(f"{unknown} of {len(config.addresses) * len(config.zones)} answers unknown (lost or timed out)",
              file=sys.stderr)
    return seconds, sum(1 for s in status if s["quarantined"])


def dnsperf(names: list[str], host: str, port: int, directory: Path) -> float:
    data = directory / "queries.txt"
    data.write_text("".join(f"{n} A\n" for n in names))
    out = subprocess.run(["dnsperf", "-s", host, "-p", str(port), "-d", str(data), "-n", "1", "-c", "4",
                          "-q", "200", "-t", "5"], capture_output=True, text=True, check=True).stdout
    completed = re.search(r"Queries completed:\s+(\d+)", out)
    # UDP on a loaded machine loses a few; dnsperf counts them lost rather than retrying
    assert completed and int(completed.group(1)) >= 0.99 * len(names), out
    run_time = re.search(r"Run time \(s\):\s+([0-9.]+)", out)
    assert run_time, out
    return float(run_time.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--addresses", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=DnsblMonitor.CONCURRENCY)
    args = parser.parse_args()
    if shutil.which("dnsperf") is None:
        sys.exit("dnsperf is not installed: run scripts/install-system-deps.sh")
    spec = IpPoolSpec.model_validate({
        "addresses": pool_addresses(args.addresses),
        "dnsbl": {"zones": ZONES, "confirmations": 1, "queryTimeout": "2s",
                  "zoneSettings": [{"zone": KEYED, "keySecretRef": {"name": "k", "key": "k"}}]}})
    from smtpinfra_operator.builders.assignment import expand_addresses

    addresses = expand_addresses(spec.addresses)
    listed = addresses[::10]
    names = [query_name(a, z, QUERY_KEY if z == KEYED else None) for z in ZONES for a in addresses]
    with tempfile.TemporaryDirectory() as d:
        knot = make_knot(Path(d), {}, bulk=listed)
        try:
            ours, ceiling, quarantined = [], [], 0
            for _ in range(args.rounds):
                seconds, quarantined = asyncio.run(our_check(spec, knot.nameserver, args.concurrency))
                ours.append(seconds)
                ceiling.append(dnsperf(names, knot.address, knot.port, Path(d)))
                print(f"round: ours {seconds:.3f} s, dnsperf {ceiling[-1]:.3f} s", file=sys.stderr)
        finally:
            knot.stop()
    assert quarantined == len(listed), (quarantined, len(listed))
    best, best_ceiling = min(ours), min(ceiling)
    print(json.dumps({"addresses": len(addresses), "zones": len(ZONES), "seconds": round(best, 3),
                      "queries_per_s": round(len(names) / best), "dnsperf_seconds": round(best_ceiling, 3),
                      "ratio": round(best / best_ceiling, 2), "rounds": [round(s, 3) for s in ours],
                      "dnsperf_rounds": [round(s, 3) for s in ceiling]}))


if __name__ == "__main__":
    main()
