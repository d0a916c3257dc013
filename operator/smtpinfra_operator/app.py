"""Kopf wiring: storage, peering and the entry point `smtp-infra operator run` calls."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

import kopf

from smtpinfra_api.meta import GROUP

PEERING_NAME = "smtp-infra"


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Keep Kopf's bookkeeping in status, not in annotations of the user's objects.

    Annotations would show up as drift in GitOps diffs; `status.kopf` is declared in every
    CRD's schema (with preserve-unknown-fields) so the API server does not prune it.
    """
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(
        field="status.kopf.lastHandledConfiguration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 270
    settings.watching.client_timeout = 300


def run(*, standalone: bool = True, peering_name: str = PEERING_NAME, liveness: str | None = None) -> None:
    """Run the operator until interrupted; handlers register on import."""
    from . import handlers  # noqa: F401  (registration side effect)

    kopf.configure(debug=os.environ.get("SMTP_INFRA_DEBUG") == "1", log_format=kopf.LogFormat.FULL, log_refkey="object")
    asyncio.run(
        kopf.operator(
            clusterwide=True,
            standalone=standalone,
            # Naming a peering makes Kopf insist on the peering CRD; only do that when asked.
            peering_name=None if standalone else peering_name,
            liveness_endpoint=liveness,
        )
    )
