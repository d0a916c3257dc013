"""Ownership of record sets, like external-dns's TXT registry, and the plan built on it.

Every record set we create has a companion TXT at `_smtp-infra-owner-<type>.<name>` holding
`"heritage=smtp-infra,smtp-infra/owner=<namespace/name>,smtp-infra/type=<TYPE>"`. A record set
is ours only when its companion names us: we never change or delete anything else, and a
foreign record set where we want one is reported as a Conflict instead of being overwritten.
Pure functions; providers read the current state and apply the plan.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .records import Record, desired_diff, normalize_name

OWNER_PREFIX = "_smtp-infra-owner-"
HERITAGE = "smtp-infra"


def owner_record_name(name: str, rtype: str) -> str:
    """Name of the ownership TXT of the record set (name, rtype)."""
    return f"{OWNER_PREFIX}{rtype.lower()}.{normalize_name(name)}"


def owner_text(owner: str, rtype: str) -> str:
    """The ownership TXT text for `owner` ("namespace/name") and `rtype`."""
    return f"heritage={HERITAGE},{HERITAGE}/owner={owner},{HERITAGE}/type={rtype.upper()}"


def owner_record(record: Record, owner: str) -> Record:
    """The companion ownership TXT of `record`."""
    return Record(owner_record_name(record.name, record.rtype), "TXT", record.ttl,
                  (f'"{owner_text(owner, record.rtype)}"',))


def is_owner_record(record: Record) -> bool:
    """Whether `record` is an ownership TXT (of any owner)."""
    return record.rtype == "TXT" and record.name.startswith(OWNER_PREFIX)


def parse_owner(record: Record) -> tuple[tuple[str, str], str] | None:
    """((name, type) owned, owner) of an ownership TXT, or None when it is not one of ours."""
    if not is_owner_record(record):
        return None
    label, _, name = record.name.partition(".")
    rtype = label[len(OWNER_PREFIX):].upper()
    for text in record.texts():
        fields = dict(part.partition("=")[::2] for part in text.split(","))
        if fields.get("heritage") == HERITAGE and fields.get(f"{HERITAGE}/type", "").upper() == rtype:
            return (name, rtype), fields.get(f"{HERITAGE}/owner", "")
    return None


def owners(current: Iterable[Record]) -> dict[tuple[str, str], str]:
    """(name, type) → owner, from the ownership TXT records in `current`."""
    out: dict[tuple[str, str], str] = {}
    for r in current:
        parsed = parse_owner(r)
        if parsed:
            out[parsed[0]] = parsed[1]
    return out


@dataclass(frozen=True)
class Conflict:
    """A record set we want that exists and is not ours; left untouched."""

    desired: Record
    existing: Record | None
    owner: str | None
    """The other smtp-infra owner, or None for a record set nobody registered."""

    @property
    def message(self) -> str:
        what = f"{self.desired.rtype} {self.desired.name}"
        if self.owner:
            return f"{what} is owned by {self.owner}"
        if self.existing is not None and self.existing.rtype == "CNAME":
            return f"{what}: a foreign CNAME exists at that name ({', '.join(self.existing.values)})"
        found = ", ".join(self.existing.values) if self.existing else "?"
        return f"{what} exists and is not managed by smtp-infra ({found}); delete it or publish ours by hand"


@dataclass(frozen=True)
class Plan:
    """What to change for one owner. Ownership TXTs are included in to_add/to_delete."""

    owner: str
    to_add: list[Record] = field(default_factory=list)
    to_delete: list[Record] = field(default_factory=list)
    unchanged: list[Record] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def has_changes(self) -> bool:
        return bool(self.to_add or self.to_delete)

    def summary(self) -> str:
        """One line for logs and Events."""
        return (f"{len(self.to_add)} to add, {len(self.to_delete)} to delete, {len(self.unchanged)} unchanged, "
                f"{len(self.conflicts)} conflicts")


def plan_changes(owner: str, desired: Iterable[Record], current: Iterable[Record]) -> Plan:
    """Plan `owner`'s changes: desired minus conflicts against what `current` shows we own.

    `current` is every record set in the zones (or at least at the desired names and all
    ownership TXTs), foreign ones included, as a provider reads them.
    """
    current = list(current)
    cur = {r.key: r for r in current}
    registry = owners(current)
    cnames = {r.name: r for r in current if r.rtype == "CNAME"}
    ok: list[Record] = []
    conflicts: list[Conflict] = []
    for d in desired:
        other = registry.get(d.key)
        existing = cur.get(d.key)
        owner_txt = cur.get((owner_record_name(d.name, d.rtype), "TXT"))
        if other is not None and other != owner:
            conflicts.append(Conflict(d, existing, other))
        elif other is None and existing is not None:
            conflicts.append(Conflict(d, existing, None))
        elif other is None and owner_txt is not None:
            # something foreign sits at the ownership name: do not overwrite it either
            conflicts.append(Conflict(d, owner_txt, None))
        elif d.name in cnames and registry.get((d.name, "CNAME")) != owner:
            conflicts.append(Conflict(d, cnames[d.name], None))
        else:
            ok.append(d)
    mine = {k for k, o in registry.items() if o == owner}
    owned_now = [r for k in mine for r in (cur.get(k), cur.get((owner_record_name(*k), "TXT"))) if r is not None]
    wanted = ok + [owner_record(r, owner) for r in ok]
    to_add, to_delete, unchanged = desired_diff(owned_now, wanted)
    return Plan(owner, to_add, to_delete, unchanged, sorted(conflicts, key=lambda c: c.desired.key))
