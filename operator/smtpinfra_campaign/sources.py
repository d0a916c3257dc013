"""Where a campaign's recipients come from: inline, a ConfigMap or Secret key, or a file on a volume.

Each call of `open_rows` starts a fresh stream of rows (the sender reads the first rows once to
check the templates, then the whole list). A file is read line by line from the recipients
volume; ConfigMap and Secret values are at most 1 MiB, so they are fetched whole.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from smtpinfra_api.v1alpha1.campaign import CampaignSpec

from .kube import CampaignApi
from .recipients import PARSERS, Row, parse_inline

RECIPIENTS_DIR = Path("/var/lib/smtp-infra/recipients")


def list_path(base: Path, relative: str) -> Path:
    """The list's path inside the recipients volume; refuses anything that escapes it."""
    root = base.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise ValueError(f"spec.recipients.file.path {relative!r} leaves the recipients volume")
    return path


def open_rows(spec: CampaignSpec, namespace: str, api: CampaignApi, header_variables: frozenset[str],
              recipients_dir: Path = RECIPIENTS_DIR) -> Iterator[Row]:
    """A new stream over the recipients; KeyError/OSError/ListError when the list cannot be read."""
    r = spec.recipients
    if r.inline is not None:
        return parse_inline(r.inline, header_variables)
    parser = PARSERS[str(r.format)]
    if r.file is not None:
        return _file_rows(list_path(recipients_dir, r.file.path), parser, header_variables)
    if r.config_map_ref is not None:
        text = api.read_key("ConfigMap", namespace, r.config_map_ref.name, r.config_map_ref.key)
    elif r.secret_ref is not None:
        text = api.read_key("Secret", namespace, r.secret_ref.name, r.secret_ref.key)
    else:
        raise ValueError("spec.recipients names no source")
    return parser(io.StringIO(text, newline=""), header_variables)


def _file_rows(path: Path, parser: Callable[[IO[str], frozenset[str]], Iterator[Row]],
               header_variables: frozenset[str]) -> Iterator[Row]:
    with path.open(encoding="utf-8", errors="replace", newline="") as stream:
        yield from parser(stream, header_variables)
