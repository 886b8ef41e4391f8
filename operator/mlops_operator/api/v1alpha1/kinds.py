"""The kinds: names, printer columns and their spec/status models, in one table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from .common import ObjectMeta, StatusBase
from .dataset import DatasetSpec, DatasetStatus
from .driftmonitor import DriftMonitorSpec, DriftMonitorStatus
from .inferencedeployment import InferenceDeploymentSpec, InferenceDeploymentStatus
from .modelpipeline import ModelPipelineSpec, ModelPipelineStatus
from .modelversion import ModelVersionSpec, ModelVersionStatus
from .trainingrun import TrainingRunSpec, TrainingRunStatus

CATEGORY = "mlops"

SpecT = TypeVar("SpecT", bound=BaseModel)
StatusT = TypeVar("StatusT", bound=StatusBase)


class Resource(BaseModel, Generic[SpecT, StatusT]):
    """A whole object of one kind, as a manifest or as the apiserver returns it."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    api_version: Literal["mlops.dev/v1alpha1"] = Field(alias="apiVersion")
    kind: str
    metadata: ObjectMeta
    spec: SpecT
    status: StatusT | None = None


@dataclass(frozen=True)
class PrinterColumn:
    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


READY = PrinterColumn("Ready", '.status.conditions[?(@.type=="Ready")].status', description="Ready condition")
PHASE = PrinterColumn("Phase", ".status.phase", description="One-word state")
AGE = PrinterColumn("Age", ".metadata.creationTimestamp", "date")


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    short_names: tuple[str, ...]
    spec_model: type[BaseModel]
    status_model: type[StatusBase]
    description: str
    printer_columns: tuple[PrinterColumn, ...] = field(default=())

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def resource_model(self) -> type[Resource[Any, Any]]:
        return Resource[self.spec_model, self.status_model]  # type: ignore[name-defined]


KINDS: tuple[KindInfo, ...] = (
    KindInfo(
        kind="Dataset",
        plural="datasets",
        short_names=("dset",),  # not "ds": kubectl resolves that to DaemonSets first
        spec_model=DatasetSpec,
        status_model=DatasetStatus,
        description="A versioned data set in S3 with a data contract; Ready when it is usable for training.",
        printer_columns=(
            PHASE,
            PrinterColumn("Objects", ".status.objectCount", "integer"),
            PrinterColumn("Bytes", ".status.totalBytes", "integer"),
            PrinterColumn("Fingerprint", ".status.fingerprint", priority=1),
            PrinterColumn("Source", ".spec.source.uri", priority=1),
            READY,
            AGE,
        ),
    ),
    KindInfo(
        kind="TrainingRun",
        plural="trainingruns",
        short_names=("tr",),
        spec_model=TrainingRunSpec,
        status_model=TrainingRunStatus,
        description="One training of one model on one Dataset, on GPU pods (torchrun when distributed).",
        printer_columns=(
            PHASE,
            PrinterColumn(
                "Queued",
                ".status.queue.reason",
                description="While Queued: Unschedulable, NoNodeFits, WaitingForAdmission or Preempted.",
            ),
            PrinterColumn("Dataset", ".spec.datasetRef.name"),
            PrinterColumn("Model", ".spec.model", priority=1),
            PrinterColumn("Nodes", ".spec.distributed.nodes", "integer"),
            PrinterColumn("GPUs", ".spec.resources.gpusPerWorker", "integer", "GPUs per worker pod"),
            PrinterColumn("Attempt", ".status.attempt", "integer"),
            READY,
            AGE,
        ),
    ),
    KindInfo(
        kind="ModelVersion",
        plural="modelversions",
        short_names=("mv",),
        spec_model=ModelVersionSpec,
        status_model=ModelVersionStatus,
        description="A trained model compiled (TensorRT or ONNX), gated and registered in a model registry.",
        printer_columns=(
            PHASE,
            PrinterColumn("Model", ".spec.modelName"),
            PrinterColumn("Target", ".spec.compile.target"),
            PrinterColumn("Accuracy", ".status.accuracy", "number", "Evaluated accuracy (4 decimals)."),
            PrinterColumn("Registry Version", ".status.registry.version"),
            READY,
            AGE,
            PrinterColumn("Run", ".spec.source.trainingRunRef.name", priority=1),
            PrinterColumn("Stage", ".spec.stage", priority=1),
            PrinterColumn("P95 ms", ".status.metrics.latency_p95_ms", "number", priority=1),
            PrinterColumn(
                "Queued",
                ".status.queue.reason",
                description="While Queued: Unschedulable, NoNodeFits, WaitingForAdmission or Preempted.",
                priority=1,
            ),
        ),
    ),
    KindInfo(
        kind="InferenceDeployment",
        plural="inferencedeployments",
        short_names=("idep",),
        spec_model=InferenceDeploymentSpec,
        status_model=InferenceDeploymentStatus,
        description="A ModelVersion served by Triton, rolled out through an Argo Rollouts canary.",
        printer_columns=(
            PHASE,
            PrinterColumn("Model", ".status.modelVersion"),
            PrinterColumn("Pipeline", ".spec.modelVersionFrom.pipelineRef.name", priority=1),
            PrinterColumn("Stable", ".status.stableVersion"),
            PrinterColumn("Canary", ".status.canaryVersion"),
            PrinterColumn("Weight", ".status.canaryWeight", "integer"),
            PrinterColumn("Endpoint", ".status.endpoint", priority=1),
            READY,
            AGE,
        ),
    ),
    KindInfo(
        kind="DriftMonitor",
        plural="driftmonitors",
        short_names=("dm",),
        spec_model=DriftMonitorSpec,
        status_model=DriftMonitorStatus,
        description="Checks newly landed data against a served model's training data for drift (Evidently).",
        printer_columns=(
            PHASE,
            PrinterColumn(
                "Drifted", '.status.conditions[?(@.type=="Drifted")].status', description="Drifted condition"
            ),
            PrinterColumn("Share", ".status.driftShare", "number", "Drifted share of the tested columns."),
            PrinterColumn("Current", ".status.currentFingerprint", description="Current data last checked."),
            PrinterColumn("Last Check", ".status.lastCheckTime", "date"),
            PrinterColumn("Columns", ".status.driftedColumns", priority=1),
            PrinterColumn("Model", ".status.modelVersion", priority=1),
            PrinterColumn("Report", ".status.reportURI", priority=1),
            READY,
            AGE,
        ),
    ),
    KindInfo(
        kind="ModelPipeline",
        plural="modelpipelines",
        short_names=("mp",),
        spec_model=ModelPipelineSpec,
        status_model=ModelPipelineStatus,
        description=(
            "Continuous training: triggers (new data, schedule, drift, manual) make TrainingRuns and "
            "ModelVersions; a champion/challenger gate promotes what following InferenceDeployments serve."
        ),
        printer_columns=(
            PHASE,
            PrinterColumn("Last Trigger", ".status.lastTrigger", description="What started the last run."),
            PrinterColumn("Last Outcome", ".status.lastOutcome", description="Outcome of the last run."),
            PrinterColumn("Promoted", ".status.latestPromoted", description="ModelVersion promoted last."),
            PrinterColumn("Active", ".status.active", description="Runs in progress."),
            PrinterColumn("Next", ".status.nextScheduleTime", "date", "When the schedule is next due."),
            READY,
            AGE,
        ),
    ),
)


def kind_by_name(kind: str) -> KindInfo:
    for info in KINDS:
        if info.kind == kind:
            return info
    raise KeyError(f"unknown kind {kind!r}; expected one of {', '.join(i.kind for i in KINDS)}")
