"""DKIM key material through the `openssl` command, so the operator process loads no crypto library.

The operator makes a key once per selector and derives a public key once per distinct Secret
content (remembered by digest); for that, cryptography's bindings cost 7-10 MB of resident memory
for the process's whole life. dkimpy's own `dknewkey` makes keys with `openssl` the same way.
Each call is its own short process, off the event loop, a few at a time, with a deadline; a key
from a tenant's Secret is bounded in size and never prompts for a passphrase.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections import OrderedDict

from smtpinfra_api.v1alpha1 import DkimAlgorithm

from .dns.records import RecordError, dkim_value

MAX_KEY_BYTES = 64 * 1024
"""A DKIM key in PEM is under 4 KiB even at 4096 bits; anything much larger is not a key."""

REMEMBERED = 4096
"""Derived public keys kept (a few hundred bytes each): more than the keys of every server at once."""


class DkimKeyError(RecordError):
    """The Secret's material is not a usable key; the message says what openssl found."""


class DkimKeys:
    """Generates DKIM keys and derives their public halves with `openssl`.

    `openssl` is the command to run (tests give a path); `parallel` bounds concurrent processes,
    since 200 servers created at once would otherwise start 200 RSA key generations together.
    """

    def __init__(self, openssl: str = "openssl", *, parallel: int | None = None, timeout: float = 30.0) -> None:
        self.openssl = openssl
        self.timeout = timeout
        self._slots = asyncio.Semaphore(parallel or os.cpu_count() or 2)
        self._public: OrderedDict[bytes, bytes] = OrderedDict()

    async def _run(self, args: list[str], stdin: bytes = b"") -> bytes:
        async with self._slots:
            proc = await asyncio.create_subprocess_exec(
                self.openssl, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            try:
                out, err = await asyncio.wait_for(proc.communicate(stdin), self.timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise DkimKeyError(f"openssl {args[0]} did not finish within {self.timeout:g} s") from None
        if proc.returncode != 0:
            lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
            raise DkimKeyError(f"openssl {args[0]}: {lines[0] if lines else f'exit status {proc.returncode}'}")
        return out

    async def generate(self, algorithm: DkimAlgorithm, rsa_bits: int = 2048) -> tuple[str, str]:
        """(private key PEM, DNS TXT value `v=DKIM1; k=…; p=…`) for a new key.

        RSA keys are PKCS#1 ("BEGIN RSA PRIVATE KEY"), which every DKIM signer reads; Ed25519 keys PKCS#8.
        """
        if algorithm is DkimAlgorithm.ED25519_SHA256:
            private = await self._run(["genpkey", "-algorithm", "ED25519"])
        else:
            private = await self._run(["genrsa", "-traditional", str(int(rsa_bits))])
        return private.decode(), dkim_value(await self.public_der(private))

    async def public_der(self, material: bytes) -> bytes:
        """The SubjectPublicKeyInfo DER of a PEM or DER key, public or private.

        Remembered by the material's digest: a reconcile asks again each time, openssl runs once.
        """
        digest = hashlib.sha256(material).digest()
        if (known := self._public.get(digest)) is not None:
            self._public.move_to_end(digest)
            return known
        der = await self._derive(material)
        self._public[digest] = der
        if len(self._public) > REMEMBERED:
            self._public.popitem(last=False)
        return der

    async def _derive(self, material: bytes) -> bytes:
        if len(material) > MAX_KEY_BYTES:
            raise DkimKeyError(f"DKIM key is {len(material)} bytes; a PEM or DER key is under {MAX_KEY_BYTES}")
        # An empty passphrase: an encrypted key fails at once instead of prompting on a terminal.
        out = ["-pubout", "-outform", "DER", "-passin", "pass:"]
        head = material.lstrip()[:64]
        if head.startswith(b"-----"):
            public = b"PRIVATE KEY" not in head
            return await self._run(["pkey", *(["-pubin"] if public else []), "-inform", "PEM", *out], material)
        try:
            return await self._run(["pkey", "-inform", "DER", *out], material)
        except DkimKeyError:
            try:
                return await self._run(["pkey", "-pubin", "-inform", "DER", *out], material)
            except DkimKeyError:
                raise DkimKeyError("DKIM key is neither a PEM nor a DER public or private key") from None
