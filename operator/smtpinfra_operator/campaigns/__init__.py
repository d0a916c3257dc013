"""Campaigns: the sender Job, its status, and tenant suspension (pure decisions + one controller)."""
