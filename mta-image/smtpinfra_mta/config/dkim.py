"""The DKIM section: which keys sign which sender domains."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from .types import DomainName, Section


class DkimKey(Section):
    """A DKIM signing key; messages whose header From is in ``domain`` (or a subdomain) get signed."""

    domain: DomainName = Field(description="Signing domain (d=).")
    selector: str = Field(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,62})$", description="Selector (s=).")
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = Field("rsa-sha256", description="Signature algorithm (a=).")
    key_file: Path = Field(
        description="Private key mounted from a Secret: PEM (PKCS#1 or PKCS#8); for ed25519 also the raw base64 seed."
    )
    headers: list[str] = Field(
        default_factory=lambda: [
            "From", "To", "Cc", "Subject", "Date", "Message-ID", "Reply-To", "MIME-Version",
            "Content-Type", "Content-Transfer-Encoding", "List-Unsubscribe", "List-Unsubscribe-Post",
            "Feedback-ID",
        ],
        description="Header fields to sign (h=); From is always signed.",
    )
