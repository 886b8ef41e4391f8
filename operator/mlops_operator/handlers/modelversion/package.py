"""What a ModelVersion is registered with: the records the trainer and the compile stage left next to
their artifacts (metadata.json, read from the tenant's bucket with the tenant's credentials), turned
into the registry request (the MLflow Model package of builders/mlflow_model.py, params, metrics,
lineage, a description a person reads)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib.metadata import version as installed_version
from typing import Any, BinaryIO

from ...api.v1alpha1 import DatasetSpec, ModelVersionSpec
from ...builders.mlflow_model import model_package
from ...integrations.endpoints import EndpointNotAllowedError
from ...integrations.registry import RegistryRejectedError, RegistryUnavailableError, VersionRequest
from ...integrations.s3 import ObjectStore, ObjectTooLargeError, S3UnavailableError, split_object_uri
from ..context import ReconcileContext
from ..secrets import CredentialsUnavailableError
from ..stores import open_store

# A metadata.json is a few KiB; anything far larger is not one.
MAX_RECORD_BYTES = 1024 * 1024
MLFLOW_VERSION = installed_version("mlflow-skinny")
_ENGINE_FIELDS = (
    "format",
    "precision",
    "tensorrtVersion",
    "gpu",
    "gpuProduct",
    "computeCapability",
    "sizeBytes",
)
# MLflow's limit on a param value.
_MAX_PARAM_VALUE = 6000


class PackageUnavailableError(Exception):
    """The records cannot be read now (the bucket is down, a Secret is missing): try again."""


def _store(ctx: ReconcileContext) -> ObjectStore:
    source = DatasetSpec.model_validate(ctx.status["pinned"]["datasetSpec"]).source
    try:
        return open_store(ctx, source)
    except (EndpointNotAllowedError, CredentialsUnavailableError, S3UnavailableError, ValueError) as error:
        raise PackageUnavailableError(f"cannot open the model's bucket: {error}") from None


def _record(store: ObjectStore, uri: str, *, required: bool) -> Mapping[str, Any] | None:
    try:
        data = store.get_bytes(*split_object_uri(uri), max_bytes=MAX_RECORD_BYTES)
    except S3UnavailableError as error:
        if error.reason == "ObjectNotFound" and not required:
            return None  # not written by this operator's trainer: registered without its extras
        raise PackageUnavailableError(f"cannot read {uri}: {error}") from None
    except ObjectTooLargeError as error:
        raise RegistryRejectedError(f"{uri} is not a metadata record: {error}") from None
    try:
        document = json.loads(data)
    except ValueError:
        raise RegistryRejectedError(f"{uri} is not JSON") from None
    if not isinstance(document, Mapping):
        raise RegistryRejectedError(f"{uri} is not a JSON object")
    return document


def _flatten(prefix: str, value: Any, into: dict[str, str]) -> None:
    if isinstance(value, Mapping):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else str(key), inner, into)
    elif value is not None:
        text = json.dumps(value) if isinstance(value, list | bool) else str(value)
        into[prefix] = text[:_MAX_PARAM_VALUE]


def params_of(trained: Mapping[str, Any] | None, spec: ModelVersionSpec) -> dict[str, str]:
    """The hyperparameters the trainer ran with (flattened: `optimizer.lr`), its architecture,
    and how the version was compiled."""
    params: dict[str, str] = {}
    _flatten("", (trained or {}).get("hyperparameters") or {}, params)
    tracking = [key for key in params if key.startswith("tracking.")]
    for key in tracking:  # where the trainer logged to, not how it trained
        del params[key]
    if (trained or {}).get("model"):
        params["model"] = str(trained["model"])  # type: ignore[index]
    params["compile.target"] = spec.compile.target
    params["compile.precision"] = spec.compile.precision
    params["compile.maxBatchSize"] = str(spec.compile.max_batch_size)
    return params


def describe(ctx: ReconcileContext) -> str:
    """Where the version came from, in a line a person reads in the registry's UI."""
    lineage: Mapping[str, Any] = ctx.status.get("lineage") or {}
    engine: Mapping[str, Any] = ctx.status.get("engine") or {}
    if lineage.get("trainingRun"):
        fingerprint = str(lineage.get("datasetFingerprint") or "")
        seen = f" (fingerprint {fingerprint[:19]})" if fingerprint else ""
        origin = f"Trained by TrainingRun {ctx.namespace}/{lineage['trainingRun']}"
        if lineage.get("dataset"):
            origin += f" on Dataset {lineage['dataset']}{seen}"
    else:
        origin = f"Imported from {lineage.get('sourceURI', 'an artifact')}"
        if lineage.get("dataset"):
            origin += f", evaluated on Dataset {lineage['dataset']}"
    target = f"compiled to {engine.get('format', '?')} {engine.get('precision') or ''}".rstrip()
    if engine.get("gpuProduct") or engine.get("gpu"):
        target += f" for {engine.get('gpuProduct') or engine.get('gpu')}"
        if engine.get("computeCapability"):
            target += f" (compute capability {engine['computeCapability']})"
    accuracy = ctx.status.get("accuracy")
    scored = f", accuracy {accuracy}" if accuracy is not None else ""
    return f"{origin}; {target}{scored}. ModelVersion {ctx.namespace}/{ctx.name} (uid {ctx.uid})."


def version_request(spec: ModelVersionSpec, ctx: ReconcileContext, tags: Mapping[str, str]) -> VersionRequest:
    """The registry request of this compiled and evaluated ModelVersion.

    Raises PackageUnavailableError (retry) or RegistryRejectedError (a record is not what this
    operator's workloads write).
    """
    status = ctx.status
    engine: Mapping[str, Any] = status.get("engine") or {}
    store = _store(ctx)
    compiled = _record(store, str(engine.get("metadataURI") or ""), required=True) or {}
    source_onnx = str((compiled.get("source") or {}).get("uri") or "")
    trained = (
        _record(store, source_onnx.rsplit("/", 1)[0] + "/metadata.json", required=False)
        if source_onnx
        else None
    )
    lineage: Mapping[str, Any] = status.get("lineage") or {}
    engine_summary = {k: engine[k] for k in _ENGINE_FIELDS if engine.get(k) is not None}
    metadata: dict[str, Any] = {
        "modelVersion": f"{ctx.namespace}/{ctx.name}",
        "uid": ctx.uid,
        "lineage": dict(lineage),
        "engine": engine_summary,
        "metrics": dict(status.get("metrics") or {}),
    }
    if trained and isinstance(trained.get("metrics"), Mapping):
        metadata["trainingMetrics"] = dict(trained["metrics"])
    package = model_package(
        engine=engine, compiled=compiled, trained=trained, mlflow_version=MLFLOW_VERSION, metadata=metadata
    )
    metadata["signature"] = dict(package.signature)

    def read(uri: str) -> tuple[BinaryIO, int]:
        try:
            return store.open_object(*split_object_uri(uri))
        except S3UnavailableError as error:
            if error.reason == "ObjectNotFound":
                raise RegistryRejectedError(f"{uri} is gone from the bucket: {error}") from None
            raise RegistryUnavailableError(f"cannot read {uri}: {error}") from None

    return VersionRequest(
        uid=ctx.uid,
        source_uri=str(engine.get("uri") or ""),
        tags=tags,
        description=describe(ctx),
        metrics=dict(status.get("metrics") or {}),
        run_name=f"{ctx.namespace}/{ctx.name}",
        params=params_of(trained, spec),
        files=package.files,
        metadata=metadata,
        read=read,
    )
