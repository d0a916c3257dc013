"""Operator-wide settings read from the environment, with the defaults a cluster wants."""

from __future__ import annotations

import os

RESYNC_SECONDS = float(os.environ.get("SMTP_INFRA_RESYNC_SECONDS", "60"))
"""How often timers re-derive every object's status (level-based reconciliation)."""
