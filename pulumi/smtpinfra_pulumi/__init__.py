"""smtp-infra for Pulumi programs: the `Resources` component for the five custom resources.

Installed with the `pulumi` extra (`pip install 'smtp-infra[pulumi]'`); ``pulumi/__main__.py`` in
the repository is a complete program that uses it.
"""

from __future__ import annotations

from .component import (
    TYPE_TOKEN,
    Declared,
    Resources,
    ResourcesArgs,
    SpecError,
    args_from_manifests,
    declared,
    manifest,
)

__all__ = ["TYPE_TOKEN", "Declared", "Resources", "ResourcesArgs", "SpecError", "args_from_manifests", "declared",
           "manifest"]
