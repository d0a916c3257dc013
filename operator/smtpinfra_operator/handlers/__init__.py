"""Kopf handlers, one module per kind; importing this package registers them all."""

from .. import resync
from . import ippool, pending, smtpserver, tenant, warmupplan

__all__ = ["ippool", "pending", "resync", "smtpserver", "tenant", "warmupplan"]
