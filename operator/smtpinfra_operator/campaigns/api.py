"""The Kubernetes calls the Campaign controller makes, as one small object it is given.

`ClusterApi` is the real one (the operator's `kube` module, informers where they exist); tests of
the controller's decisions need none of it, the e2e tests run it against the local control plane.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any, Protocol

from smtpinfra_api.meta import API_VERSION
from smtpinfra_api.v1alpha1 import Campaign
from smtpinfra_kube import KubeApi

from ..conditions import Outcome
from ..statuswriter import StatusWriter
from ..usage import UsageCollector


class CampaignApi(Protocol):
    """What the controller reads and writes."""

    async def get(self, api_version: str, kind: str, name: str, namespace: str | None = None
                  ) -> dict[str, Any] | None: ...

    async def list_objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]: ...

    async def apply(self, obj: dict[str, Any]) -> None: ...

    async def create(self, obj: dict[str, Any]) -> None: ...

    async def merge_patch(self, api_version: str, kind: str, name: str, namespace: str, patch: dict[str, Any]
                          ) -> None: ...

    async def publish(self, body: Mapping[str, Any], outcome: Outcome) -> bool: ...

    def event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None: ...

    def campaign_stats(self) -> list[Mapping[str, Any] | None]:
        """Each MTA pod's `/stats` `campaigns` object from the latest collection (None: pod did not answer)."""
        ...


class ClusterApi:
    """The operator's own API access: its client, status writer and usage collector, handed in by the runtime."""

    def __init__(self, kube: KubeApi, status: StatusWriter, usage: UsageCollector) -> None:
        self.kube = kube
        self.status = status
        self.usage = usage

    async def get(self, api_version: str, kind: str, name: str, namespace: str | None = None
                  ) -> dict[str, Any] | None:
        if (api_version, kind) in ((API_VERSION, "Tenant"), (API_VERSION, "SmtpServer")):
            return await self.kube.get_cached(api_version, kind, name, namespace)
        if (api_version, kind) == ("v1", "Secret"):
            return await self.kube.get_known(api_version, kind, name, namespace)
        return await self.kube.get(api_version, kind, name, namespace)

    async def list_objects(self, api_version: str, kind: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return await self.kube.list_objects(api_version, kind, namespace)

    async def apply(self, obj: dict[str, Any]) -> None:
        await self.kube.apply(obj)

    async def create(self, obj: dict[str, Any]) -> None:
        await self.kube.create(obj)

    async def merge_patch(self, api_version: str, kind: str, name: str, namespace: str, patch: dict[str, Any]
                          ) -> None:
        group = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        path = f"{group}/namespaces/{namespace}/{kind.lower()}s/{name}"  # Job, Campaign: regular plurals
        await asyncio.to_thread(self.kube.request, "PATCH", path, body=patch,
                                content_type="application/merge-patch+json")

    async def publish(self, body: Mapping[str, Any], outcome: Outcome) -> bool:
        return await self.status.publish(Campaign, body, outcome)

    def event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        self.status.post_event_soon(body, type_, reason, message)

    def campaign_stats(self) -> list[Mapping[str, Any] | None]:
        return self.usage.campaign_stats()

