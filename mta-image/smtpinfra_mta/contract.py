"""Checks of tenant-provided values shared by the MTA's config model and the operator.

The operator validates a tenant's credentials Secret with :func:`credential_problem` before the line
reaches a server's config (a bad one makes that Tenant ``Ready=False``); the MTA applies the same rule
when it loads inline credentials and credentials files, so a line that slipped through anyway locks out
only its own login and never costs the other tenants anything.
"""

from __future__ import annotations

import re

from smtpinfra_mta.passwords import hash_problem

USERNAME_MAX = 128
_USERNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]*")
"""Letters, digits and ``._@+-`` (not first): safe in a ``username:hash`` line, a log field and a label."""
PASSWORD_HASH_MAX = 512


def username_problem(username: str) -> str | None:
    """Why ``username`` is not an acceptable SMTP login name, or None."""
    if not username:
        return "the username is empty"
    if len(username) > USERNAME_MAX:
        return f"the username is longer than {USERNAME_MAX} characters"
    if not _USERNAME_RE.fullmatch(username):
        return "the username may contain only letters, digits and '.', '_', '@', '+', '-' (not first)"
    return None


def credential_problem(username: str, password_hash: str) -> str | None:
    """Why a (username, password hash) pair must not be served, or None when it is acceptable.

    Checks the username's charset and length, and that the hash is one of the known schemes with cost
    parameters within the bounds the MTA verifies (see :mod:`smtpinfra_mta.passwords`). Callers holding
    raw Secret bytes decode them as UTF-8 first; a decoding failure is a problem of its own to report.
    """
    problem = username_problem(username)
    if problem is not None:
        return problem
    if not password_hash:
        return "the password hash is empty"
    if len(password_hash) > PASSWORD_HASH_MAX or not password_hash.isascii() or not password_hash.isprintable():
        return "the password hash must be at most 512 printable ASCII characters on one line"
    problem = hash_problem(password_hash)
    return None if problem is None else f"the password hash is unusable: {problem}"
