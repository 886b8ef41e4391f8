"""Where a ModelVersion's model comes from: a Succeeded TrainingRun or an artifact URI, the Dataset
whose S3 settings and held-out split the stages use, and the calibration Dataset."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...api.v1alpha1 import DatasetSpec, ModelVersionSpec
from ...integrations.endpoints import EndpointNotAllowedError
from ...integrations.s3 import S3UnavailableError, split_object_uri
from ...k8s.conditions import find_condition
from ...timeutil import to_rfc3339
from ..base import READY, Outcome, ready
from ..context import ReconcileContext
from ..reads import read_object
from ..secrets import CredentialsUnavailableError
from ..stores import open_store
from .common import canonical_sha256, retry_after

SOURCE_KEYS = ("model.onnx", "metadata.json")


@dataclass(frozen=True)
class Source:
    """The trained model and the Dataset (S3 settings, held-out split) a ModelVersion compiles from."""

    model_uri: str
    dataset_spec: Mapping[str, Any]
    lineage: Mapping[str, Any]
    calibration_uri: str | None = None


def _ready_dataset(ctx: ReconcileContext, name: str, purpose: str) -> Mapping[str, Any] | Outcome:
    dataset = read_object(ctx, "Dataset", "datasets", name)
    if dataset is None:
        return Outcome(
            "Pending", (ready("False", "DatasetNotFound", f"Dataset {name} ({purpose}) does not exist"),)
        )
    said: Mapping[str, Any] = find_condition((dataset.get("status") or {}).get("conditions", []), READY) or {}
    if said.get("status") != "True":
        why = f"{said.get('reason')}: {said.get('message')}" if said else "not reconciled yet"
        return Outcome(
            "Pending",
            (ready("False", "DatasetNotReady", f"Dataset {name} ({purpose}) is not Ready ({why})"),),
        )
    return dataset


def _from_training(spec: ModelVersionSpec, ctx: ReconcileContext, name: str) -> Source | Outcome:
    run = read_object(ctx, "TrainingRun", "trainingruns", name)
    if run is None:
        return Outcome(
            "WaitingForTraining",
            (ready("False", "TrainingRunNotFound", f"TrainingRun {name} does not exist in {ctx.namespace}"),),
        )
    status = run.get("status") or {}
    phase = status.get("phase")
    run_ready: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    if phase == "Failed":
        return Outcome(
            "Failed",
            (
                ready(
                    "False",
                    "TrainingFailed",
                    f"TrainingRun {name} failed ({run_ready.get('reason')}: {run_ready.get('message', '')})",
                ),
            ),
            {"completionTime": to_rfc3339(ctx.now())},
        )
    if phase != "Succeeded":
        return Outcome(
            "WaitingForTraining",
            (ready("False", "WaitingForTraining", f"TrainingRun {name} is {phase or 'not reconciled yet'}"),),
        )
    pinned = status.get("pinned") or {}
    model_uri = status.get("modelURI")
    if not model_uri or not pinned.get("datasetSpec"):
        return Outcome(
            "Failed",
            (
                ready(
                    "False",
                    "NoModelArtifact",
                    f"TrainingRun {name} succeeded without recording a model artifact (status.modelURI) "
                    "or its Dataset (status.pinned): it was not trained by this operator's trainer",
                ),
            ),
            {"completionTime": to_rfc3339(ctx.now())},
        )
    dataset_name = str((run.get("spec") or {}).get("datasetRef", {}).get("name", ""))
    dataset_spec: Mapping[str, Any] = pinned["datasetSpec"]
    if spec.evaluation.dataset_ref:
        evaluation = _ready_dataset(ctx, spec.evaluation.dataset_ref.name, "evaluation")
        if isinstance(evaluation, Outcome):
            return evaluation
        dataset_spec = evaluation["spec"]
    lineage = {
        "trainingRun": name,
        "trainingRunUID": str(run["metadata"].get("uid", "")),
        "dataset": dataset_name,
        "datasetFingerprint": status.get("datasetFingerprint"),
        "trainerImage": pinned.get("image"),
        "hyperparametersSha256": canonical_sha256((pinned.get("spec") or {}).get("hyperparameters") or {}),
        "sourceURI": model_uri,
    }
    return Source(str(model_uri), dataset_spec, {k: v for k, v in lineage.items() if v})


def _from_artifact(spec: ModelVersionSpec, ctx: ReconcileContext, uri: str) -> Source | Outcome:
    assert spec.evaluation.dataset_ref is not None  # the schema's rule
    evaluation = _ready_dataset(ctx, spec.evaluation.dataset_ref.name, "evaluation")
    if isinstance(evaluation, Outcome):
        return evaluation
    source = DatasetSpec.model_validate(evaluation["spec"]).source
    prefix = uri.rstrip("/") + "/"
    try:
        store = open_store(ctx, source)
        missing = [key for key in SOURCE_KEYS if not store.exists(*split_object_uri(prefix + key))]
    except (EndpointNotAllowedError, CredentialsUnavailableError, S3UnavailableError, ValueError) as error:
        return _source_unavailable(ctx, f"cannot check {prefix}: {error}")
    if missing:
        return _source_unavailable(ctx, f"{prefix} has no {' and no '.join(missing)}")
    lineage = {"dataset": spec.evaluation.dataset_ref.name, "sourceURI": prefix}
    return Source(prefix, evaluation["spec"], lineage)


def _source_unavailable(ctx: ReconcileContext, message: str) -> Outcome:
    return Outcome(
        "Pending",
        (ready("False", "SourceUnavailable", message),),
        requeue_after=retry_after(ctx, "SourceUnavailable"),
    )


def resolve_source(spec: ModelVersionSpec, ctx: ReconcileContext) -> Source | Outcome:
    """The source, or the outcome that says what it waits for."""
    if spec.source.training_run_ref:
        source = _from_training(spec, ctx, spec.source.training_run_ref.name)
    else:
        assert spec.source.artifact_uri is not None  # the schema's rule: exactly one
        source = _from_artifact(spec, ctx, spec.source.artifact_uri)
    if isinstance(source, Outcome) or not spec.compile.calibration:
        return source
    calibration = _ready_dataset(ctx, spec.compile.calibration.dataset_ref.name, "calibration")
    if isinstance(calibration, Outcome):
        return calibration
    return Source(source.model_uri, source.dataset_spec, source.lineage, calibration["spec"]["source"]["uri"])
