"""How a kind is described to the CRD generator: models, names, scope and printer columns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..meta import GROUP, ApiModel, CommonStatus, ScopeName


@dataclass(frozen=True)
class PrinterColumn:
    """An additionalPrinterColumns entry."""

    name: str
    type: str
    json_path: str
    description: str = ""
    priority: int = 0

    def wire(self) -> dict[str, Any]:
        """The column as the CRD wants it (jsonPath, not json_path)."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


def ready_columns() -> list[PrinterColumn]:
    """The Ready and Reason columns every kind shows (Reason only with -o wide)."""
    return [
        PrinterColumn(name="Ready", type="string", json_path='.status.conditions[?(@.type=="Ready")].status',
                      description="The Ready condition"),
        PrinterColumn(name="Reason", type="string", json_path='.status.conditions[?(@.type=="Ready")].reason',
                      description="Why Ready has its value", priority=1),
    ]


#: The Age column kubectl shows last for every kind.
AGE_COLUMN = PrinterColumn(name="Age", type="date", json_path=".metadata.creationTimestamp")


class Kind:
    """Static description of one custom resource kind: its models and CRD metadata."""

    kind: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[list[str]]
    scope: ClassVar[ScopeName]
    spec_model: ClassVar[type[ApiModel]]
    status_model: ClassVar[type[CommonStatus]]
    description: ClassVar[str]
    columns: ClassVar[list[PrinterColumn]]
    top_level_validations: ClassVar[list[dict[str, Any]]] = []

    @classmethod
    def singular(cls) -> str:
        """Lower-case kind, the CRD's singular name."""
        return cls.kind.lower()

    @classmethod
    def crd_name(cls) -> str:
        """<plural>.<group>."""
        return f"{cls.plural}.{GROUP}"
