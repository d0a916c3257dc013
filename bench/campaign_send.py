"""Campaign path throughput: `smtp-infra campaign send`'s loop -> our MTA -> ``smtp-sink``, against the MTA alone.

Two measurements in one run, on the same machine:

* the MTA's own rate: `bench/mta_throughput.py`'s ``mta`` side (``smtp-source``, 20 sessions, one
  message per connection, relayed to ``smtp-sink``), with messages of about the campaign's size;
* the campaign path: the sender (`smtpinfra_campaign.sender.CampaignSender`, in this process) with a
  20,000-row CSV list on disk, the SQLite ledger (WAL) and pacing off
  (1,000,000/min), submitting over STARTTLS + AUTH to the same MTA configuration's submission
  listener, which delivers to ``smtp-sink``. The Campaign and Tenant objects and the Lease are served
  from memory (`MemoryCampaignApi` below): the bench measures the sending path, not an API server.

Prints the sender's rate (all rows in the ledger as submitted), the end-to-end rate (the sink counted
every message) and the MTA's own rate; the last line is JSON with ``campaign_share`` = the sender's rate /
the MTA's own rate (target >= 0.9: the campaign path hands over at least 0.9 of what the MTA alone takes,
so it is not the bottleneck) and ``end_to_end_share`` = end-to-end rate / the MTA's own rate (here the
sender, the MTA's receiving and its delivering share the machine's cores, so this one is bounded by the
MTA's CPU per message on the submission path, which `mta_submission_cpu_ms_per_msg` reports).

    .venv/bin/python bench/campaign_send.py [--recipients 20000] [--connections 16] [--profile 25]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import datetime
import json
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mta_throughput as mt

from smtpinfra_campaign.ledger import State, open_ledger
from smtpinfra_campaign.sender import CampaignSender, SenderSettings
from smtpinfra_campaign.submission import SmtpSettings, TlsMode
from smtpinfra_mta.passwords import hash_password

PASSWORD = "bench-password-0123456789"
SENDER_DOMAIN = "news.bench"


class MemoryCampaignApi:
    """The Campaign, Tenant and Lease from memory (a stand-in for the API server in this bench only)."""

    def __init__(self, campaign: dict[str, Any], tenant: dict[str, Any]) -> None:
        self.campaign = campaign
        self.tenant = tenant
        self.lease: dict[str, Any] | None = None
        self.version = 0

    def get_campaign(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.campaign

    def get_tenant(self, name: str) -> dict[str, Any] | None:
        return self.tenant

    def read_key(self, kind: str, namespace: str, name: str, key: str) -> str:
        raise KeyError(f"{kind} {namespace}/{name}")

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.lease

    def _store(self, lease: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        lease.setdefault("metadata", {})["resourceVersion"] = str(self.version)
        self.lease = lease
        return lease

    def create_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        return self._store(lease)

    def replace_lease(self, namespace: str, lease: dict[str, Any]) -> dict[str, Any]:
        return self._store(lease)


def self_signed(work: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mta.bench")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=7)).sign(key, hashes.SHA256()))
    (work / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (work / "tls.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    return work / "tls.crt", work / "tls.key"


def campaign_mta(procs: mt.Processes, work: Path, sink_port: int, separate: bool,
                 receivers: int = 1) -> tuple[subprocess.Popen[bytes], int]:
    """The bench MTA configuration plus a submission listener and one tenant allowed to send to the sink."""
    port = mt.free_port(mt.MTA_ADDR)
    cfg = mt.mta_config(work, sink_port, mt.free_port(mt.MTA_ADDR), separate, receivers)
    cert, key = self_signed(work)
    cfg["listeners"]["submission"] = {"bind": [mt.MTA_ADDR], "port": port}
    cfg["tls"] = {"cert_file": str(cert), "key_file": str(key)}
    cfg["tenants"] = [{"name": "bench", "sender_domains": [SENDER_DOMAIN], "pool": "bench",
                       "credentials": [{"username": "bench",
                                        "password_hash": hash_password(PASSWORD, "hmac-sha256")}]}]
    cfg["limits"]["max_message_size"] = 1_000_000
    path = work / "mta.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = dict(os.environ, PYTHONPATH=str(mt.REPO / "mta-image"))
    proc = procs.start([sys.executable, "-m", "smtpinfra_mta", "serve", "--config", str(path), "--log-level",
                        "WARNING"], stdout=(work / "mta.log").open("wb"), stderr=subprocess.STDOUT, env=env, cwd=work)
    mt.wait_port(mt.MTA_ADDR, port)
    return proc, port


def campaign_objects(rows: int, list_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    with (list_dir / "list.csv").open("w", encoding="utf-8") as f:
        f.write("email,first_name,code\n")
        f.writelines(f"user{i}@{mt.DOMAIN},User {i},{i:08d}\n" for i in range(rows))
    campaign = {"metadata": {"name": "bench", "namespace": "tenant-bench", "uid": "bench-uid-1"}, "spec": {
        "tenant": "bench", "serverRef": {"name": "outbound", "namespace": "default"},
        "sender": {"address": f"news@{SENDER_DOMAIN}", "name": "Bench News"},
        "subject": "News for {{ first_name }}",
        "templates": {"text": "Hello {{ first_name }},\n" + "the news of the month.\n" * 30 + "Code {{ code }}\n",
                      "html": "<p>Hello {{ first_name }},</p>" + "<p>the news of the month.</p>" * 30},
        "recipients": {"file": {"claimName": "lists", "path": "list.csv"}},
        "rate": {"messagesPerMinute": 1_000_000},
        "unsubscribe": {"url": "https://u.news.bench/unsubscribe", "mailto": f"unsubscribe@{SENDER_DOMAIN}"},
        "postalAddress": "Bench Ltd, 1 Load Street, Benchville"}}
    tenant = {"metadata": {"name": "bench"}, "spec": {"senderDomains": [SENDER_DOMAIN]}}
    return campaign, tenant


def run_campaign(procs: mt.Processes, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    work.mkdir(parents=True)
    sink = mt.Sink(procs)
    mta, port = campaign_mta(procs, work, sink.port, args.separate_process, args.receivers)
    try:
        campaign, tenant = campaign_objects(args.recipients, work)
        ledger = open_ledger(f"sqlite:///{work / 'ledger.db'}")
        settings = SenderSettings(
            namespace="tenant-bench", name="bench", unsubscribe_key=b"bench-key", unsubscribe_url=None,
            smtp=SmtpSettings(mt.MTA_ADDR, port, "bench", PASSWORD, TlsMode.STARTTLS, verify=False),
            connections=args.connections, recipients_dir=work)
        sender = CampaignSender(settings, MemoryCampaignApi(campaign, tenant), ledger)
        profile = cProfile.Profile() if args.profile else None
        mta_cpu0, sender_cpu0 = mt.tree_cpu_seconds(mta.pid), time.process_time()
        t0 = time.monotonic()
        if profile is not None:
            profile.enable()
        code = asyncio.run(sender.run())
        t_sender = time.monotonic()
        sender_cpu = time.process_time() - sender_cpu0
        if profile is not None:
            profile.disable()
            pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(args.profile)
        t_sink = sink.wait_for(args.recipients, max(300.0, args.recipients / 10))
        mta_cpu = mt.tree_cpu_seconds(mta.pid) - mta_cpu0
        submitted = ledger.counts("bench-uid-1")[State.SUBMITTED]
        ledger.close()
        if code != 0 or submitted != args.recipients:
            raise RuntimeError(f"sender exit {code}, {submitted}/{args.recipients} submitted")
        return {"sender_msgs_per_s": round(args.recipients / (t_sender - t0), 1),
                "end_to_end_msgs_per_s": round(args.recipients / (t_sink - t0), 1),
                "seconds": round(t_sink - t0, 2),
                # CPU per message (independent of machine load): the sender in this process, the MTA's processes
                "sender_cpu_ms_per_msg": round(sender_cpu * 1000 / args.recipients, 3),
                "mta_submission_cpu_ms_per_msg": round(mta_cpu * 1000 / args.recipients, 3)}
    finally:
        procs.stop(mta)
        procs.stop(sink.proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipients", type=int, default=20_000)
    ap.add_argument("--connections", type=int, default=16,
                    help="sender SMTP connections (default 16, as `smtp-infra campaign send`)")
    ap.add_argument("--sessions", type=int, default=20, help="smtp-source sessions for the MTA's own rate")
    ap.add_argument("--size", type=int, default=2048, help="message size for the MTA's own rate (about a campaign "
                                                           "message)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="profile the sender (cProfile, in this process) and print its N costliest functions "
                         "to stderr")
    ap.add_argument("--single-process", dest="separate_process", action="store_false")
    ap.add_argument("--receivers", type=int, default=1, help="receiving processes of the MTA (listeners.processes)")
    args = ap.parse_args()
    procs = mt.Processes()
    try:
        with tempfile.TemporaryDirectory(prefix="campaign-bench-") as tmp:
            work = Path(tmp)
            campaign = run_campaign(procs, work / "campaign", args)
            print(f"campaign: sender {campaign['sender_msgs_per_s']} msg/s, end to end "
                  f"{campaign['end_to_end_msgs_per_s']} msg/s ({args.recipients} recipients, "
                  f"{campaign['seconds']} s)", flush=True)
            own_args = argparse.Namespace(messages=args.recipients, sessions=args.sessions, log_level="WARNING",
                                          separate_process=args.separate_process, receivers=args.receivers)
            own = mt.measure(procs, "mta", work / "mta", own_args, args.size)
            print(f"MTA alone (smtp-source, {args.sessions} sessions, {args.size} B): {own['msgs_per_s']} msg/s",
                  flush=True)
    finally:
        procs.stop_all()
    end_to_end_share = round(campaign["end_to_end_msgs_per_s"] / own["msgs_per_s"], 3)
    share = round(campaign["sender_msgs_per_s"] / own["msgs_per_s"], 3)
    print(json.dumps({"recipients": args.recipients, "connections": args.connections, **campaign,
                      "mta_msgs_per_s": own["msgs_per_s"], "mta_relay_cpu_ms_per_msg": own.get("cpu_ms_per_msg"),
                      "end_to_end_share": end_to_end_share, "campaign_share": share}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
