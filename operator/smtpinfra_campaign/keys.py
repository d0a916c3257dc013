"""The unsubscribe key a campaign's sender gets: derived per tenant and namespace from its server's.

The operator copies this, never the server's own key, into the campaign's namespace; the MTA
derives the same key from its server key to verify a link (``smtpinfra_mta.campaign_contract``).
"""

from __future__ import annotations

from smtpinfra_mta import campaign_contract as contract


def sender_key(server_key: str, tenant: str, namespace: str) -> str:
    """The sender key of `tenant`'s campaigns in `namespace`, from the server's key as its Secret holds it."""
    return contract.sender_key(server_key.strip().encode("utf-8"), tenant, namespace).decode("ascii")
