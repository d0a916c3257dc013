"""Generated secrets: tenant passwords usable by any SMTP client's command line, and strong enough for HMAC."""

from __future__ import annotations

import pytest

from smtpinfra_mta.passwords import MIN_GENERATED_LENGTH, hash_password, verify_password
from smtpinfra_operator.builders.keys import PASSWORD_ALPHABET, generate_password

pytestmark = pytest.mark.operator


def test_generated_passwords_are_long_letters_and_digits_only() -> None:
    samples = [generate_password() for _ in range(2000)]
    assert len(set(samples)) == len(samples)
    for p in samples:
        assert len(p) == 32 >= MIN_GENERATED_LENGTH
        assert set(p) <= set(PASSWORD_ALPHABET)
        assert not p.startswith("-")  # swaks and friends would read it as an option
    assert len(set("".join(samples))) == 62  # every letter and digit shows up: the whole alphabet is used


def test_a_generated_password_round_trips_through_the_fast_scheme() -> None:
    p = generate_password()
    h = hash_password(p, "hmac-sha256")
    assert verify_password(p, h)
    assert not verify_password(p[:-1] + ("a" if p[-1] != "a" else "b"), h)
