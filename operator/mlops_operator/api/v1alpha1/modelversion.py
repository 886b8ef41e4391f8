"""ModelVersion: a trained model compiled, gated and registered as a deployable version."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import (
    ApiModel,
    CelRule,
    HttpURL,
    Image,
    LabelValue,
    LocalObjectReference,
    ObjectName,
    Scheduling,
    SecretKeyReference,
    StatusBase,
    nested,
)
from .kubevalues import DNS_LABEL


class ModelSource(ApiModel):
    """Where the trained model comes from: exactly one of a TrainingRun or an artifact URI."""

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


class DynamicShape(ApiModel):
    """Optimization-profile shape range of one input (TensorRT min/opt/max; batch dimension first)."""

    cel_rules = (
        CelRule(
            rule="size(self.min) == size(self.opt) && size(self.opt) == size(self.max)",
            message="min, opt and max must have the same number of dimensions",
            check=lambda d: len(d.min) == len(d.opt) == len(d.max),
        ),
    )

    input: str = Field(description="Input tensor name.", min_length=1, max_length=128)
    min: list[int] = Field(description="Smallest shape.", min_length=1, max_length=8)
    opt: list[int] = Field(description="Shape the engine is tuned for.", min_length=1, max_length=8)
    max: list[int] = Field(description="Largest shape.", min_length=1, max_length=8)


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
            "GPU-specific."
        ),
    )
    calibration: Calibration | None = Field(default=None, description="INT8 calibration data.")
    image: Image | None = Field(
        default=None, description="Compiler image (no whitespace); unset uses the operator's default."
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
    aliases: list[str] = Field(
        default_factory=list,
        description="Aliases to point at this version (e.g. candidate, production).",
        max_length=16,
    )


class ModelVersionSpec(ApiModel):
    """Desired state of a ModelVersion."""

    model_name: str = Field(
        description="Registered model name.", min_length=1, max_length=63, pattern=DNS_LABEL
    )
    source: ModelSource = Field(description="Where the trained model comes from.")
    compile: Compile = nested(Compile, "Compilation for serving.")
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
    dataset: str | None = Field(default=None, description="Dataset it was trained on.")
    dataset_fingerprint: str | None = Field(default=None, description="Fingerprint of that data.")
    source_uri: str | None = Field(default=None, description="Trained model artifact URI.")


class Engine(ApiModel):
    """The compiled artifact."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    uri: str | None = Field(default=None, description="Artifact URI (engine plan or ONNX model).")
    format: Literal["tensorrt", "onnx"] | None = Field(default=None, description="tensorrt or onnx.")
    precision: str | None = Field(default=None, description="Precision it was built with.")
    tensorrt_version: str | None = Field(default=None, description="TensorRT version.")
    gpu: str | None = Field(default=None, description="GPU it was built on (engines are GPU-specific).")
    size_bytes: int | None = Field(default=None, description="Artifact size.")


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
    aliases: list[str] = Field(default_factory=list, description="Aliases pointing at it.")


ModelVersionPhase = Literal[
    "Pending", "WaitingForTraining", "Compiling", "Evaluating", "Registering", "Ready", "Rejected", "Failed"
]


class ModelVersionStatus(StatusBase):
    """Observed state of a ModelVersion."""

    phase: ModelVersionPhase | None = Field(
        default=None,
        description=(
            "Pending, WaitingForTraining, Compiling, Evaluating, Registering, Ready, Rejected (a gate "
            "failed) or Failed."
        ),
    )
    lineage: Lineage | None = Field(default=None, description="TrainingRun, Dataset and data fingerprint.")
    engine: Engine | None = Field(default=None, description="The compiled artifact.")
    metrics: dict[str, float] = Field(default_factory=dict, description="Evaluation results.")
    gates: list[GateResult] = Field(default_factory=list, description="Acceptance gate results.")
    registry: RegistryStatus | None = Field(default=None, description="Registration.")
