"""The model registry interface the ModelVersion controller calls; one implementation per provider.

A provider object serves one tenant's target (registry URL, model name, credential). Every call is
synchronous and makes one attempt per request, bounded by the timeout given to `open_registry`: the
operator retries with its own backoff (kopf), so a registry that is down costs a worker seconds,
not minutes. Failures come back as two kinds: `RegistryUnavailableError` (try again later) and
`RegistryRejectedError` (a person has to change something). Neither message ever holds the
credential.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Literal, Protocol

from ...metrics import REGISTRY_REQUESTS
from ...redaction import MASK, redact

log = logging.getLogger("mlops_operator.integrations.registry")

UID_TAG = "mlops.dev/uid"
ARCHIVED_TAG = "mlops.dev/archived"

# What both providers accept as an alias: MLflow's rule (alphanumerics, `_`, `-`; not `latest`, not
# `v<digits>`, which name versions), which W&B accepts too. `uid-…` is the W&B provider's own
# idempotency alias. Checked before any request, so both providers refuse the same names.
_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_VERSION_LIKE = re.compile(r"^[vV]\d+$")
UID_ALIAS_PREFIX = "uid-"
# A Kubernetes uid is a UUID; anything else would end up inside a registry filter expression.
_UID = re.compile(r"^[A-Za-z0-9-]{1,128}$")


@dataclass(frozen=True)
class RegistryTarget:
    """Where versions are registered, built by the handler from `spec.registry` and the Secret."""

    provider: Literal["mlflow", "wandb"]
    model_name: str  # MLflow registered model name / W&B registry collection
    project: str  # MLflow experiment name (unused for registration) / W&B project
    entity: str | None = None  # W&B entity
    tracking_uri: str | None = None  # MLflow server URL / W&B base URL (None: the SDK's default)
    credential: str | None = field(default=None, repr=False)  # never logged, never in a message


@dataclass(frozen=True)
class PackageFile:
    """One file of the model package a version is registered with, at `path` inside it (MLflow
    Model layout: `MLmodel`, `model.onnx`, `input_example.json`, `tensorrt/model.plan`…). Small
    files the operator builds carry their `content`; large ones stay in the tenant's bucket (`uri`)
    and are read through `VersionRequest.read` when a provider copies them."""

    path: str
    content: bytes | None = None
    uri: str | None = None
    size_bytes: int | None = None


# Opens an object of the tenant's bucket for streaming: (a file-like object, its length in bytes).
ObjectReader = Callable[[str], tuple[BinaryIO, int]]


@dataclass(frozen=True)
class VersionRequest:
    uid: str  # the ModelVersion's metadata.uid: the idempotency key
    source_uri: str  # the compiled artifact (s3://…/model.onnx or model.plan)
    tags: Mapping[str, str]  # lineage tags
    description: str = ""
    metrics: Mapping[str, float] = field(default_factory=dict)
    # "<namespace>/<ModelVersion>": the name of the MLflow run / W&B run that logs the version.
    run_name: str = ""
    # The training hyperparameters, flattened to strings (MLflow run params, W&B run config).
    params: Mapping[str, str] = field(default_factory=dict)
    # The model package (MLflow Model layout); empty: the version refers to `source_uri` only.
    files: tuple[PackageFile, ...] = ()
    # What a reader of the registry wants next to the files: lineage, engine (format, precision,
    # GPU product, compute capability), signature. JSON-serialisable (W&B artifact metadata).
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # Reads the `uri` files; None when there are none to read.
    read: ObjectReader | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class RegisteredVersion:
    version: str  # "1", "2"… for MLflow; "v3" for W&B
    url: str | None
    aliases: tuple[str, ...]  # sorted; without the provider's own (W&B: `latest`, `uid-…`)
    archived: bool = False
    tags: Mapping[str, str] = field(default_factory=dict)


class RegistryError(Exception):
    """Base of the registry errors."""


class RegistryUnavailableError(RegistryError):
    """Connection refused or reset, timeout, DNS, HTTP 5xx or 429: try again later."""


class RegistryBusyError(RegistryUnavailableError):
    """The provider is busy with another registration it can only do one at a time (W&B's
    process-wide session): try again shortly; nothing is wrong with the registry."""


class RegistryRejectedError(RegistryError):
    """The registry refused the request (bad credential, permission, invalid name): a person has to
    change the spec, the Secret or the registry. The message says what, without the credential."""


class RegistryVersionNotFoundError(RegistryRejectedError):
    """`set_aliases` or `archive` named a version the registry does not have (any more)."""


class ModelRegistry(Protocol):
    provider: str

    def find(self, uid: str) -> RegisteredVersion | None:
        """The version tagged UID_TAG=uid, or None."""
        ...

    def get(self, version: str) -> RegisteredVersion | None:
        """The version, or None when it does not exist (any more)."""
        ...

    def register(self, request: VersionRequest) -> RegisteredVersion:
        """Idempotent: the version of `request.uid` if there is one, else a new one (creating the
        registered model / collection when absent)."""
        ...

    def set_aliases(self, version: str, add: Sequence[str], remove: Sequence[str]) -> RegisteredVersion:
        """Point every alias in `add` at `version` (it leaves the version it was on); take every
        alias in `remove` off `version` when it is there (never another version's)."""
        ...

    def archive(self, version: str) -> RegisteredVersion:
        """All aliases off `version`, tagged ARCHIVED_TAG=true. Idempotent."""
        ...


def open_registry(target: RegistryTarget, *, timeout_seconds: float = 10.0) -> ModelRegistry:
    """The provider for `target`; it sends nothing until it is called."""
    # Imported here: each SDK is heavy, and wandb is an optional extra.
    if target.provider == "mlflow":
        from .mlflow import MlflowRegistry  # noqa: PLC0415

        return MlflowRegistry(target, timeout_seconds=timeout_seconds)
    if target.provider == "wandb":
        from .wandb import WandbRegistry  # noqa: PLC0415

        return WandbRegistry(target, timeout_seconds=timeout_seconds)
    raise RegistryRejectedError(f"unknown registry provider {target.provider!r}: use mlflow or wandb")


def check_uid(uid: str) -> str:
    if not _UID.match(uid):
        raise ValueError(f"not a Kubernetes uid: {uid!r}")
    return uid


def check_aliases(add: Sequence[str], remove: Sequence[str]) -> None:
    """Refuse, before any request, what neither provider can take as an alias."""
    both = sorted(set(add) & set(remove))
    if both:
        raise ValueError(f"aliases both added and removed: {both}")
    for alias in [*add, *remove]:
        problem = None
        if not _ALIAS.match(alias):
            problem = "may only contain letters, digits, '_' and '-' (at most 255)"
        elif alias.lower() == "latest":
            problem = "'latest' is reserved by the registry"
        elif _VERSION_LIKE.match(alias):
            problem = "v<number> names a version, not an alias"
        elif alias.startswith(UID_ALIAS_PREFIX):
            problem = f"'{UID_ALIAS_PREFIX}…' is the operator's own idempotency alias"
        if problem:
            raise RegistryRejectedError(f"invalid alias {alias!r} in spec.registry.aliases: {problem}")


def scrub(text: str, credential: str | None) -> str:
    """`text` without the credential (exact value first, then anything credential-shaped)."""
    if credential:
        text = text.replace(credential, MASK)
    return redact(text)


def count(
    provider: str, operation: str, result: Literal["ok", "unavailable", "rejected", "notfound"]
) -> None:
    REGISTRY_REQUESTS.labels(provider=provider, operation=operation, result=result).inc()
    log.debug("%s registry: %s -> %s", provider, operation, result)
