"""Runs an Argo CD health.lua the way Argo CD does: Lua 5.1 with the object as the global ``obj``.

Argo CD embeds gopher-lua (Lua 5.1); Debian's ``lua5.1`` is the same language. The object is
handed over as a Lua table literal, with JSON null left out as Argo's conversion does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CUSTOMIZATIONS = ROOT / "argocd" / "resource_customizations" / "smtpinfra.com"
KINDS = ("SmtpServer", "IpPool", "WarmupPlan", "Tenant", "Campaign")

_HARNESS = """
local script = assert(loadfile(arg[1]))
local hs = script()
io.write(tostring(hs.status), "\\n", tostring(hs.message))
"""


def lua_literal(value: Any) -> str:
    """A Lua 5.1 expression for a JSON value (dicts become tables with string keys, lists 1-based)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + "".join(_escape(ch) for ch in value) + '"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(v) for v in value) + "}"
    if isinstance(value, dict):
        items = [f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"not a JSON value: {value!r}")


def _escape(ch: str) -> str:
    if ch in '"\\':
        return "\\" + ch
    if ch.isascii() and ch.isprintable():
        return ch
    return "".join(f"\\{b}" for b in ch.encode())


def lua_binary() -> str:
    found = shutil.which("lua5.1")
    if found is None:
        raise AssertionError("lua5.1 not installed (scripts/apt-packages.txt lists it)")
    return found


def health(kind: str, obj: dict[str, Any], tmp_dir: Path) -> tuple[str, str]:
    """(status, message) of the kind's health.lua for this object."""
    harness = tmp_dir / "harness.lua"
    harness.write_text(f"obj = {lua_literal(obj)}\n{_HARNESS}")
    result = subprocess.run([lua_binary(), str(harness), str(CUSTOMIZATIONS / kind / "health.lua")],
                            capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{kind}/health.lua failed: {result.stderr}")
    status, _, message = result.stdout.partition("\n")
    return status, message
