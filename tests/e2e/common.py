"""Names and addresses shared by the end-to-end tests."""

from tests.dns.knot import FORWARD_ZONE

NS = "mail-e2e"
SINK_ADDR = "127.0.20.42"
POOL_ADDRESSES = ["127.0.20.1", "127.0.20.2", "127.0.20.3"]
SENDER_DOMAIN = f"acme.{FORWARD_ZONE}"
RCPT_DOMAIN = f"rcpt.{FORWARD_ZONE}"
