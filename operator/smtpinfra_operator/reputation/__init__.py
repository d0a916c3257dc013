"""IP reputation: blocklist monitoring, quarantine and health-gated warm-up of pool addresses."""
