"""The kubelet's atomic writer: volume files swapped in through a ``..data`` symlink."""

from __future__ import annotations

import contextlib
import random
import shutil
import time
from pathlib import Path


def write_payload(target: Path, payload: dict[str, tuple[bytes, int]]) -> bool:
    """Make ``target`` hold exactly ``payload`` (relative path -> (content, mode)); True if changed.

    Same layout as the kubelet's AtomicWriter: the files live in a hidden timestamped directory,
    ``..data`` is a symlink to it and each visible top-level entry is a symlink through
    ``..data``. An update writes a new directory and renames a new ``..data`` symlink over the
    old one, so a reader sees either the old or the new set of files, never a mix, and a process
    watching the path sees the change.
    """
    target.mkdir(parents=True, exist_ok=True)
    data_link = target / "..data"
    if data_link.is_symlink():
        current = target / data_link.readlink()
        if _payload_matches(current, payload):
            return False
    else:
        current = None
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.") + f"{random.randrange(10**9):09d}"
    new_dir = target / stamp
    new_dir.mkdir()
    for rel, (content, mode) in payload.items():
        path = new_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        path.chmod(mode)
    tmp_link = target / "..data_tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp_link.unlink()
    tmp_link.symlink_to(stamp)
    tmp_link.replace(data_link)
    tops = {rel.split("/", 1)[0] for rel in payload}
    for top in tops:
        link = target / top
        if not link.is_symlink():
            link.symlink_to(f"..data/{top}")
    for entry in target.iterdir():
        if entry.name.startswith(".."):
            continue
        if entry.name not in tops and entry.is_symlink():
            entry.unlink()
    if current is not None and current.exists():
        shutil.rmtree(current, ignore_errors=True)
    return True


def _payload_matches(current: Path, payload: dict[str, tuple[bytes, int]]) -> bool:
    try:
        found = {str(p.relative_to(current)) for p in current.rglob("*") if p.is_file()}
        if found != set(payload):
            return False
        for rel, (content, mode) in payload.items():
            path = current / rel
            if path.read_bytes() != content or (path.stat().st_mode & 0o7777) != mode:
                return False
    except OSError:
        return False
    return True
