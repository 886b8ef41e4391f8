"""ModelVersion: a trained model compiled, gated and registered as a deployable version."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import Field

from .common import (
    ApiModel,
    CelRule,
    HttpURL,
    Image,
    LabelValue,
    LocalObjectReference,
    ObjectName,
    QueueStatus,
    Scheduling,
    SecretKeyReference,
    StatusBase,
    nested,
)
from .kubevalues import DNS_LABEL

# MLflow and W&B alias rules together: letters, digits, '-' and '_' (MLflow refuses '.').
# `latest`, `v<N>` and `uid-…` are the registries' or the operator's own (Registry's CEL rule).
RegistryAlias = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9_-]+$")]
RESERVED_ALIAS_CEL = (
    "!has(self.aliases) || self.aliases.all(a, !a.matches('^[lL][aA][tT][eE][sS][tT]$') "
    "&& !a.matches('^[vV][0-9]+$') && !a.startsWith('uid-'))"
)


def _alias_reserved(alias: str) -> bool:
    return (
        alias.lower() == "latest"
        or re.fullmatch(r"[vV][0-9]+", alias) is not None
        or alias.startswith("uid-")
    )


class ModelSource(ApiModel):
    """Where the trained model comes from: exactly one of a TrainingRun or an artifact URI.

    The model, the compiled artifact and the evaluation data are read and written with the S3
    endpoint and credentials of one Dataset: the TrainingRun's (as it was pinned when the run
    started), or `evaluation.datasetRef` for an artifact URI. The operator never uses its own identity.
    """

    cel_rules = (
        CelRule(
            rule="has(self.trainingRunRef) != has(self.artifactURI)",
            message="exactly one of trainingRunRef or artifactURI must be set",
            check=lambda s: (s.training_run_ref is None) != (s.artifact_uri is None),
        ),
    )

    training_run_ref: LocalObjectReference | None = Field(
        default=None, description="A Succeeded TrainingRun in the same namespace whose model is promoted."
    )
    artifact_uri: str | None = Field(
        default=None,
        description="A model directory produced elsewhere (s3://…), holding model.onnx and metadata.json.",
        pattern=r"^s3://",
        max_length=1024,
    )


# A TensorRT optimization profile dimension: concrete and non-negative (-1, ONNX's "any", is not one).
ShapeDimension = Annotated[int, Field(ge=0)]
# Dimension by dimension, min <= opt <= max (a list of at most 8 dimensions, see DynamicShape).
SHAPE_ORDER_CEL = (
    "[0, 1, 2, 3, 4, 5, 6, 7].all(i, i >= size(self.min) || i >= size(self.opt) || i >= size(self.max) "
    "|| (self.min[i] <= self.opt[i] && self.opt[i] <= self.max[i]))"
)


def _shape_ordered(d: DynamicShape) -> bool:
    return all(lo <= opt <= hi for lo, opt, hi in zip(d.min, d.opt, d.max, strict=False))


class DynamicShape(ApiModel):
    """Optimization-profile shape range of one input (TensorRT min/opt/max; batch dimension first)."""

    cel_rules = (
        CelRule(
            rule="size(self.min) == size(self.opt) && size(self.opt) == size(self.max)",
            message="min, opt and max must have the same number of dimensions",
            check=lambda d: len(d.min) == len(d.opt) == len(d.max),
        ),
        CelRule(
            rule=SHAPE_ORDER_CEL,
            message="in every dimension min must not exceed opt, nor opt max",
            check=_shape_ordered,
        ),
    )

    input: str = Field(description="Input tensor name.", min_length=1, max_length=128)
    min: list[ShapeDimension] = Field(description="Smallest shape.", min_length=1, max_length=8)
    opt: list[ShapeDimension] = Field(
        description="Shape the engine is tuned for.", min_length=1, max_length=8
    )
    max: list[ShapeDimension] = Field(description="Largest shape.", min_length=1, max_length=8)


class Calibration(ApiModel):
    """INT8 calibration data."""

    dataset_ref: LocalObjectReference = Field(description="Dataset whose samples calibrate INT8 ranges.")
    max_samples: int = Field(default=512, ge=1, le=100000, description="Calibration samples to use.")


class Compile(ApiModel):
    """How the model is compiled for serving."""

    cel_rules = (
        CelRule(
            rule="self.precision != 'int8' || has(self.calibration)",
            message="precision int8 requires calibration",
            check=lambda c: c.precision != "int8" or c.calibration is not None,
        ),
    )

    target: Literal["tensorrt", "onnx"] = Field(
        default="tensorrt",
        description="tensorrt builds an engine in a GPU Job; onnx serves the ONNX model (ONNX Runtime).",
    )
    precision: Literal["fp32", "fp16", "int8"] = Field(default="fp16", description="fp32, fp16 or int8.")
    max_batch_size: int = Field(default=8, ge=1, le=4096, description="Largest batch the engine accepts.")
    dynamic_shapes: list[DynamicShape] = Field(
        default_factory=list, description="Optimization profile per input.", max_length=16
    )
    workspace_mib: int = Field(
        default=2048,
        alias="workspaceMiB",
        ge=64,
        le=262144,
        description="TensorRT builder workspace limit in MiB.",
    )
    gpu_product: LabelValue | None = Field(
        default=None,
        description=(
            "GPU model to compile on (node label nvidia.com/gpu.product, a label value); engines are "
            "GPU-specific. Unset: any GPU node, and the engine records the product it was built on."
        ),
    )
    calibration: Calibration | None = Field(default=None, description="INT8 calibration data.")
    image: Image | None = Field(
        default=None, description="Compiler image (no whitespace); unset uses the operator's default."
    )
    deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=7 * 24 * 3600,
        description=(
            "Longest one compile attempt may run, from when its Job was admitted and its pod scheduled "
            "(the Job's activeDeadlineSeconds; time Queued for capacity does not count); past it the "
            "attempt is stopped and the ModelVersion fails with StageDeadlineExceeded. "
            "Unset: the operator's MLOPS_STAGE_DEADLINE_SECONDS. May change after compile started."
        ),
    )


class Evaluation(ApiModel):
    """How the compiled artifact is evaluated before the gates are checked."""

    dataset_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "Dataset whose held-out split is scored, and whose S3 endpoint and credentials the compile "
            "and evaluate Jobs use; defaults to the TrainingRun's Dataset (required with artifactURI)."
        ),
    )
    split: str = Field(
        default="test",
        description="Split to score: a held-out split of the Dataset.",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$",
    )
    batch_size: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="Batch size of the latency measurement (compile.maxBatchSize).",
    )
    warmup_batches: int = Field(default=10, ge=0, le=10000, description="Untimed warm-up batches.")
    latency_batches: int = Field(default=100, ge=1, le=100000, description="Timed batches.")
    deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=7 * 24 * 3600,
        description=(
            "Longest one evaluate attempt may run, from when its Job was admitted and its pod scheduled "
            "(the Job's activeDeadlineSeconds; time Queued for capacity does not count); past it the "
            "attempt is stopped and the ModelVersion fails with StageDeadlineExceeded. "
            "Unset: the operator's MLOPS_STAGE_DEADLINE_SECONDS. May change after compile started."
        ),
    )


class MetricGate(ApiModel):
    """A threshold on one evaluation metric."""

    name: str = Field(description="Metric name as the evaluator reports it, e.g. accuracy.", max_length=128)
    op: Literal[">=", ">", "<=", "<"] = Field(default=">=", description="Comparison: metric OP threshold.")
    threshold: float = Field(description="Threshold value.")


class AcceptanceGates(ApiModel):
    """Gates the compiled model must pass before it is registered."""

    metrics: list[MetricGate] = Field(default_factory=list, description="Metric thresholds.", max_length=32)
    max_latency_p95_ms: float | None = Field(
        default=None, ge=0, description="Largest acceptable p95 latency per batch, in milliseconds."
    )
    max_size_mb: float | None = Field(
        default=None, ge=0, alias="maxSizeMB", description="Largest acceptable artifact size in MB."
    )


class Registry(ApiModel):
    """Model registry the version is recorded in."""

    cel_rules = (
        CelRule(
            rule="self.provider != 'mlflow' || has(self.trackingURI)",
            message="provider mlflow requires trackingURI",
            check=lambda r: r.provider != "mlflow" or r.tracking_uri is not None,
        ),
        CelRule(
            rule=RESERVED_ALIAS_CEL,
            message="aliases latest, v<N> and uid-… are reserved by the registries and the operator",
            check=lambda r: not any(_alias_reserved(a) for a in r.aliases),
        ),
    )

    provider: Literal["wandb", "mlflow"] = Field(default="wandb", description="wandb or mlflow.")
    project: str = Field(description="W&B project, or MLflow experiment.", min_length=1, max_length=128)
    entity: str | None = Field(default=None, description="W&B entity.", max_length=128)
    collection: str | None = Field(
        default=None,
        description="Registry collection (W&B) or registered model name (MLflow); defaults to modelName.",
        max_length=128,
    )
    tracking_uri: HttpURL | None = Field(
        default=None, description="MLflow tracking server URL (http(s) with a host)."
    )
    credentials_secret_ref: SecretKeyReference | None = Field(
        default=None, description="Secret key with the registry's API key or token."
    )
    aliases: list[RegistryAlias] = Field(
        default_factory=list,
        description=(
            "Aliases to point at this version (e.g. candidate, champion). An alias points at one version "
            "of the registered model at a time: setting it here moves it off the version that had it."
        ),
        max_length=16,
    )
    deletion_policy: Literal["Retain", "Archive"] = Field(
        default="Retain",
        description=(
            "What deleting the ModelVersion does in the registry: Retain leaves the version as it is; "
            "Archive takes its aliases off and marks it archived."
        ),
    )


class ModelVersionSpec(ApiModel):
    """Desired state of a ModelVersion."""

    cel_rules = (
        CelRule(
            rule="!has(self.source.artifactURI) || (has(self.evaluation) && has(self.evaluation.datasetRef))",
            message=(
                "source.artifactURI requires evaluation.datasetRef: the Dataset whose held-out split is "
                "scored and whose S3 credentials are used"
            ),
            check=lambda s: s.source.artifact_uri is None or s.evaluation.dataset_ref is not None,
        ),
    )

    model_name: str = Field(
        description="Registered model name.", min_length=1, max_length=63, pattern=DNS_LABEL
    )
    source: ModelSource = Field(description="Where the trained model comes from.")
    compile: Compile = nested(Compile, "Compilation for serving.")
    evaluation: Evaluation = nested(Evaluation, "How the compiled artifact is evaluated.")
    gates: AcceptanceGates = nested(AcceptanceGates, "Acceptance gates checked before registration.")
    registry: Registry | None = Field(default=None, description="Model registry; empty skips registration.")
    stage: Literal["Development", "Staging", "Production", "Archived"] = Field(
        default="Staging", description="Lifecycle stage recorded in the registry."
    )
    scheduling: Scheduling = nested(Scheduling, "Scheduling of the compile and evaluate Jobs.")
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount of the compile and evaluate Jobs."
    )


class Lineage(ApiModel):
    """Where a model version came from."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    training_run: str | None = Field(default=None, description="TrainingRun that produced the model.")
    training_run_uid: str | None = Field(default=None, alias="trainingRunUID", description="Its UID.")
    dataset: str | None = Field(default=None, description="Dataset it was trained on.")
    dataset_fingerprint: str | None = Field(default=None, description="Fingerprint of that data.")
    trainer_image: str | None = Field(default=None, description="Trainer image that trained it.")
    hyperparameters_sha256: str | None = Field(
        default=None, description="SHA-256 of the hyperparameters (canonical JSON) it was trained with."
    )
    source_uri: str | None = Field(default=None, description="Trained model artifact URI.")


class Engine(ApiModel):
    """The compiled artifact."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    uri: str | None = Field(default=None, description="Artifact URI (engine plan or ONNX model).")
    format: Literal["tensorrt", "onnx"] | None = Field(default=None, description="tensorrt or onnx.")
    precision: str | None = Field(default=None, description="Precision it was built with.")
    metadata_uri: str | None = Field(default=None, description="The engine's metadata.json.")
    tensorrt_version: str | None = Field(default=None, description="TensorRT version.")
    gpu: str | None = Field(default=None, description="GPU it was built on (engines are GPU-specific).")
    gpu_product: str | None = Field(
        default=None, description="Node label nvidia.com/gpu.product of the node it was built on."
    )
    compute_capability: str | None = Field(default=None, description="That GPU's compute capability.")
    size_bytes: int | None = Field(default=None, description="Artifact size.")
    runtime: str | None = Field(default=None, description="Runtime the evaluation ran it with.")


class GateResult(ApiModel):
    """The outcome of one acceptance gate."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    name: str = Field(description="Gate name.")
    passed: bool = Field(description="Whether it passed.")
    observed: float | None = Field(default=None, description="Observed value.")
    threshold: float | None = Field(default=None, description="Threshold it was checked against.")
    message: str = Field(default="", description="Details.")


class RegistryStatus(ApiModel):
    """Where the version is registered."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    provider: str | None = Field(default=None, description="wandb or mlflow.")
    version: str | None = Field(default=None, description="Version in the registry.")
    url: str | None = Field(default=None, description="Link to the version.")
    model_name: str | None = Field(default=None, description="Registered model or collection.")
    aliases: list[str] = Field(default_factory=list, description="Aliases pointing at it.")
    applied_aliases: list[str] = Field(
        default_factory=list,
        description="The aliases the operator put on this version (the spec's aliases and stage).",
    )
    archived: bool | None = Field(default=None, description="Whether the version is marked archived.")
    promoted_generation: int | None = Field(
        default=None, description="The generation whose stage and aliases were last applied."
    )


class StageFailure(ApiModel):
    """Why one compile or evaluate attempt failed."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    stage: str = Field(description="compile or evaluate.", max_length=16)
    attempt: int = Field(description="The attempt, starting at 1.")
    reason: str = Field(
        description=(
            "The workload's or the pod's reason, StageDeadlineExceeded or QueueTimeoutExceeded "
            "(scheduling.queueTimeoutSeconds)."
        ),
        max_length=128,
    )
    message: str = Field(default="", description="Details.", max_length=1024)
    retryable: bool = Field(description="Whether another attempt could help.")
    exit_code: int | None = Field(default=None, description="Exit code, when the workload exited.")
    time: str | None = Field(default=None, description="When the failure was seen.")


ModelVersionPhase = Literal[
    "Pending",
    "WaitingForTraining",
    "Compiling",
    "Queued",
    "Evaluating",
    "Registering",
    "Ready",
    "Rejected",
    "Failed",
]


class ModelVersionStatus(StatusBase):
    """Observed state of a ModelVersion."""

    phase: ModelVersionPhase | None = Field(
        default=None,
        description=(
            "Pending, WaitingForTraining, Compiling, Queued (a compile or evaluate Job waits for "
            "capacity: see currentStage and queue), Evaluating, Registering, Ready, Rejected (a gate "
            "failed) or Failed."
        ),
    )
    lineage: Lineage | None = Field(default=None, description="TrainingRun, Dataset and data fingerprint.")
    engine: Engine | None = Field(default=None, description="The compiled artifact.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Evaluation results.")
    accuracy: float | None = Field(
        default=None,
        description=(
            "metrics.accuracy rounded to 4 decimals, for `kubectl get` (the exact value is in metrics)."
        ),
    )
    gates: list[GateResult] = Field(default_factory=list, description="Acceptance gate results.")
    registry: RegistryStatus | None = Field(default=None, description="Registration.")
    serving_version: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Triton's version number for this ModelVersion: the registry version (MLflow N; W&B vN -> "
            "N+1), 1 without a registry"
        ),
    )
    spec_hash: str | None = Field(
        default=None,
        description="Hash of what the compiled artifact depends on, fixed when compile started.",
    )
    pinned: dict[str, Any] | None = Field(
        default=None,
        description="The source, S3 settings and image the compile and evaluate Jobs are built from.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    attempt: int | None = Field(default=None, description="Attempt of the current compile or evaluate Job.")
    job_name: str | None = Field(default=None, description="The Job of the current stage.")
    current_stage: Literal["compile", "evaluate"] | None = Field(
        default=None,
        description=(
            "The stage whose Job jobName is, while Compiling, Evaluating or Queued (a Queued version "
            "resumes this stage)."
        ),
    )
    queue: QueueStatus | None = Field(
        default=None,
        description="While Queued: what the stage's Job waits for, where, and since when.",
    )
    next_attempt_time: str | None = Field(
        default=None, description="When the next attempt starts, while waiting out the retry backoff."
    )
    compile_start_time: str | None = Field(default=None, description="When compile started.")
    compile_seconds: float | None = Field(default=None, description="How long compile took.")
    evaluation_seconds: float | None = Field(default=None, description="How long evaluation took.")
    completion_time: str | None = Field(default=None, description="When it became Ready, Rejected or Failed.")
    failures: list[StageFailure] = Field(
        default_factory=list, description="Failed compile or evaluate attempts, oldest first.", max_length=20
    )
