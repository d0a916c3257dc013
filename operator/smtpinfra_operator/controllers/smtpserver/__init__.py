"""SmtpServer: decisions (pure), gathering, and the controller that applies and publishes."""

from .controller import SmtpServerController
from .decide import Gathered, MissingReference, decide, referenced_secrets, wants_resync

__all__ = ["Gathered", "MissingReference", "SmtpServerController", "decide", "referenced_secrets", "wants_resync"]
