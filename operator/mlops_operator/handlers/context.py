"""What a reconcile may look at besides the spec: the object, its status, its children as the
watches delivered them, clients for writes (and the rare read-through), settings, time."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..engine.cache import Cache
from ..integrations.registry import ModelRegistry, RegistryTarget, open_registry
from ..integrations.s3 import Boto3ObjectStore, ObjectStore, S3Config
from ..k8s.rawapi import RawApi
from ..settings import OperatorConfig


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Clients:
    """API clients, made once per operator process (tests build their own)."""

    api: Any  # kubernetes.client.ApiClient
    object_store: Callable[[S3Config], ObjectStore] = Boto3ObjectStore
    registry_factory: Callable[..., ModelRegistry] = open_registry
    # Whether the apiserver serves Argo Rollouts (discovery at startup): the InferenceDeployment
    # workload is a Rollout then, a Deployment otherwise.
    rollouts: bool = False

    def registry(self, target: RegistryTarget, timeout_seconds: float) -> ModelRegistry:
        """A client of the registry `target` names, with the tenant's credential it carries."""
        return self.registry_factory(target, timeout_seconds=timeout_seconds)

    @property
    def core(self) -> Any:
        from kubernetes import client  # noqa: PLC0415

        return client.CoreV1Api(self.api)

    @property
    def batch(self) -> Any:
        from kubernetes import client  # noqa: PLC0415

        return client.BatchV1Api(self.api)

    @property
    def raw(self) -> RawApi:
        """Plain-JSON requests: what the engine writes with (no client model classes)."""
        return RawApi(self.api)

    @property
    def custom(self) -> Any:
        from kubernetes import client  # noqa: PLC0415

        return client.CustomObjectsApi(self.api)


@dataclass
class ReconcileContext:
    body: Mapping[str, Any]
    clients: Clients | None = None
    config: OperatorConfig = field(default_factory=OperatorConfig)
    now: Callable[[], datetime] = _utcnow
    cache: Cache = field(default_factory=Cache)
    # A Secret the object names appeared or changed since its last reconcile: what waited on
    # credentials (a Dataset's next check, gated by its own backoff) is worth trying now.
    secrets_changed: bool = False

    @property
    def namespace(self) -> str:
        return str(self.body["metadata"]["namespace"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    @property
    def status(self) -> Mapping[str, Any]:
        return self.body.get("status") or {}

    @property
    def uid(self) -> str:
        return str(self.body["metadata"].get("uid", ""))

    @property
    def generation(self) -> int | None:
        value = self.body.get("metadata", {}).get("generation")
        return int(value) if value is not None else None

    def require_clients(self) -> Clients:
        if self.clients is None:
            raise RuntimeError("this reconcile needs API clients")
        return self.clients
