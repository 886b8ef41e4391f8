"""The Triton model repository of the version rolled out: built (builders/triton.py) and published
to its content-addressed prefix next to the engine, with the tenant's S3 credentials (the
ModelVersion's pinned Dataset), unless the status says that prefix already holds it.

The model in it is the ModelVersion's Triton version (`serving_version`: its status.servingVersion,
the registry's version number), so the stable pods and a canary's each answer with their own
version; status.repository.tritonVersion says which."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ...api.v1alpha1 import DatasetSpec, InferenceDeploymentSpec
from ...builders.triton import (
    DEFAULT_TRITON_VERSION,
    TritonBuildError,
    build_model_repository,
    triton_model_version,
)
from ...integrations.endpoints import EndpointNotAllowedError
from ...integrations.s3 import S3UnavailableError, split_object_uri
from ...integrations.triton_repository import publish_repository
from ..context import ReconcileContext
from ..secrets import CredentialsUnavailableError
from ..stores import open_store

METADATA_MAX_BYTES = 1024 * 1024


def hash_of(value: Any) -> str:
    """A short content hash of JSON data (children applied, repository settings)."""
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def settings_hash(spec: InferenceDeploymentSpec, ctx: ReconcileContext) -> str:
    return hash_of(
        {
            "triton": spec.triton.wire(),
            "gpus": spec.resources.gpus,
            "cpuBackend": ctx.config.triton_cpu_backend,
        }
    )


def serving_version(mv_status: Mapping[str, Any]) -> int:
    """Triton's version of a ModelVersion: its status.servingVersion, written at registration; for
    one registered before that field existed, derived from status.registry.version alike."""
    recorded = mv_status.get("servingVersion")
    if isinstance(recorded, int) and not isinstance(recorded, bool) and recorded >= 1:
        return recorded
    return triton_model_version((mv_status.get("registry") or {}).get("version"))


def published(
    spec: InferenceDeploymentSpec, ctx: ReconcileContext, mv: Mapping[str, Any]
) -> dict[str, Any] | tuple[str, str]:
    """The published repository of this ModelVersion ({modelVersion, engineURI, uri, settingsHash,
    tritonVersion}): from status when it was published for this very engine, settings and Triton
    version, else built and published now; or (reason, message). A status from before
    tritonVersion was recorded held version 1."""
    engine = mv["status"]["engine"]
    known = ctx.status.get("repository") or {}
    settings = settings_hash(spec, ctx)
    version = serving_version(mv["status"])
    if (
        known.get("modelVersion") == mv["metadata"]["name"]
        and known.get("engineURI") == engine["uri"]
        and known.get("settingsHash") == settings
        and known.get("tritonVersion", DEFAULT_TRITON_VERSION) == version
    ):
        return {**known, "tritonVersion": version}
    dataset = DatasetSpec.model_validate((mv["status"].get("pinned") or {})["datasetSpec"])
    try:
        store = open_store(ctx, dataset.source)
        bucket, key = split_object_uri(str(engine["metadataURI"]))
        metadata = json.loads(store.get_bytes(bucket, key, max_bytes=METADATA_MAX_BYTES))
        repository = build_model_repository(
            str(mv["spec"]["modelName"]),
            metadata,
            str(engine["uri"]),
            spec.triton,
            spec.resources.gpus,
            cpu_backend=ctx.config.triton_cpu_backend,
            version=version,
        )
        prefix = publish_repository(store, str(engine["uri"]).rsplit("/", 1)[0], repository)
    except TritonBuildError as error:
        return "InvalidModel", f"cannot serve ModelVersion {mv['metadata']['name']}: {error}"
    except (EndpointNotAllowedError, CredentialsUnavailableError, S3UnavailableError, ValueError) as error:
        return "RepositoryUnavailable", f"cannot publish the Triton model repository: {error}"
    return {
        "modelVersion": str(mv["metadata"]["name"]),
        "engineURI": str(engine["uri"]),
        "uri": prefix,
        "settingsHash": settings,
        "tritonVersion": version,
    }
