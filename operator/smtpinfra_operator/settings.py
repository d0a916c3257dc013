"""Operator-wide settings read from the environment, with the defaults a cluster wants."""

from __future__ import annotations

import os

RESYNC_SECONDS = float(os.environ.get("SMTP_INFRA_RESYNC_SECONDS", "60"))
"""How often timers re-derive every object's status (level-based reconciliation)."""

FULL_RESYNC_SECONDS = float(os.environ.get("SMTP_INFRA_FULL_RESYNC_SECONDS", "300"))
"""How often the resync re-derives a Ready SmtpServer in full (references, config, DNS); servers
that are not Ready are re-derived every RESYNC_SECONDS. Changes to what is watched (the server,
its children and pods, tenants, pools) reconcile at once either way."""
