"""Kopf handlers, one module per kind; importing this package registers them all."""

from . import pending, warmupplan

__all__ = ["pending", "warmupplan"]
