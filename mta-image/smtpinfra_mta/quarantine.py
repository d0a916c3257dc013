"""The spool's ``quarantine/`` area: inbound reports that could not be handled, kept for inspection.

A report that cannot be parsed in time, is malformed, or whose handling fails is released from the
queue (it must never be retried forever nor stop delivery) but not thrown away: its content and
envelope go here, next to a note saying why. The area is bounded in size and age (the oldest entries
go first), because whoever can mail port 25 can fill it.

Layout: ``<id>.json`` (envelope, reason, time) and ``<id>.eml`` (content, cut at the size bound).
Both are written to a temporary name and renamed, the note last, so a listed entry is complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

from smtpinfra_mta.spool import SpooledMessage

ENTRY_MAX_BYTES = 1024 * 1024
"""Content kept per report: the headers and report parts come first, a 25 MB tail adds nothing to inspect."""


@dataclass(frozen=True)
class Usage:
    messages: int
    bytes: int


class Quarantine:
    """One quarantine directory with its bounds; synchronous (call it from a worker thread)."""

    def __init__(self, directory: Path, *, max_bytes: int, max_age: float, fsync: bool = True) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._fsync = fsync

    def put(self, msg: SpooledMessage, content: bytes, reason: str, detail: str, now: float | None = None) -> bool:
        """Keep ``content`` (cut to the size bound); False when the bound is 0 and nothing is kept."""
        now = time.time() if now is None else now
        if self.max_bytes <= 0:
            return False
        self.directory.mkdir(parents=True, exist_ok=True)
        kept = content[: min(ENTRY_MAX_BYTES, self.max_bytes // 2)]  # the note and other entries need room too
        note = {
            "id": msg.id, "client": msg.client, "mail_from": msg.mail_from, "rcpts": msg.rcpts,
            "received_at": msg.received_at, "quarantined_at": now, "reason": reason, "detail": detail[:500],
            "size": max(msg.size, len(content)), "truncated": len(kept) < max(msg.size, len(content)),
        }
        self._write(self.directory / f"{msg.id}.eml", kept)
        self._write(self.directory / f"{msg.id}.json", json.dumps(note, indent=1).encode() + b"\n")
        self.prune(now)
        return True

    def _write(self, path: Path, data: bytes) -> None:
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("wb") as f:
            f.write(data)
            f.flush()
            if self._fsync:
                os.fsync(f.fileno())
        tmp.replace(path)

    def _entries(self) -> list[tuple[float, str, int]]:
        """(time, id, bytes) per entry, oldest first; orphans (an .eml without note) count too."""
        found: dict[str, tuple[float, int]] = {}
        try:
            paths = list(self.directory.iterdir())
        except FileNotFoundError:
            return []
        for path in paths:
            if path.suffix not in (".json", ".eml") or path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except FileNotFoundError:
                continue
            first, size = found.get(path.stem, (st.st_mtime, 0))
            found[path.stem] = (min(first, st.st_mtime), size + st.st_size)
        return sorted((t, stem, size) for stem, (t, size) in found.items())

    def prune(self, now: float | None = None) -> Usage:
        """Delete entries past the age bound, then the oldest until the size bound holds; what is left."""
        now = time.time() if now is None else now
        entries = self._entries()
        total = sum(size for _, _, size in entries)
        kept = len(entries)
        for t, stem, size in entries:
            if now - t <= self.max_age and total <= self.max_bytes:
                break
            for suffix in (".json", ".eml"):
                with contextlib.suppress(FileNotFoundError):
                    (self.directory / f"{stem}{suffix}").unlink()
            total -= size
            kept -= 1
        return Usage(kept, total)

    def notes(self) -> list[dict[str, object]]:
        """The notes of the entries present, oldest first (for inspection and tests)."""
        out: list[dict[str, object]] = []
        for _, stem, _ in self._entries():
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads((self.directory / f"{stem}.json").read_bytes()))
        return out
