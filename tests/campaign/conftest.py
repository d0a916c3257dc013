"""Fixtures for the campaign sender: the MTA suite's real peers (MTA, smtp-sink, PostgreSQL) are reused."""

from tests.kube import crds
from tests.mta.conftest import (
    dkim_keys,
    dns_server,
    mta_factory,
    password_hashes,
    postgres_url,
    sink_factory,
    tls_files,
)
