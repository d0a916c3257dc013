"""The campaign sender: `smtp-infra campaign send` renders and submits a Campaign exactly once per recipient.

One concern per module: recipients (streamed parsing), templates (sandboxed rendering and the
controller's pre-flight check), message (the RFC 5322 message with the compliance headers),
ledger (per-recipient state in SQLite or PostgreSQL), pacing (token bucket), submission (SMTP to
the tenant's submission listener), lease (one sender per campaign), kube (the API objects it
reads), progress (the Lease annotation) and sender (the loop tying them together).
"""
