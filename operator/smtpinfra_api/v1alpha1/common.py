"""Pieces every kind of smtpinfra.com/v1alpha1 shares: list-type markers and mailbox providers."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

#: Marks a list of scalars as a set: no duplicates, merged by value under server-side apply.
SET_LIST = {"x-kubernetes-list-type": "set"}


def map_list(*keys: str) -> dict[str, Any]:
    """Marks a list as a map keyed by ``keys``, so server-side apply merges its items by key."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": list(keys)}


class MailboxProvider(StrEnum):
    """Mailbox providers with their own limits; MX host suffixes identify them."""

    GMAIL = "gmail"
    YAHOO = "yahoo"
    MICROSOFT = "microsoft"
    APPLE = "apple"
    COMCAST = "comcast"
    OTHER = "other"
