"""ModelPipeline: continuous training.

A pipeline holds the templates of a TrainingRun and a ModelVersion, the training Dataset and its
triggers: the Dataset's fingerprint changed, a cron schedule, a DriftMonitor turning `Drifted`, and
the manual annotation `mlops.dev/trigger` (any new value triggers once). Each trigger makes one run:
a TrainingRun `<pipeline>-<n>` on the Dataset and a ModelVersion `<pipeline>-<n>` of it, owned by the
pipeline, with CronJob's concurrency policies and history limits.

Coming in a later change (seams left here): the champion/challenger gate (a run's outcome
`Promoted`), `status.latestPromoted` that an InferenceDeployment may follow, and manual approval.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import ApiModel, CelRule, LocalObjectReference, ObjectName, StatusBase, nested
from .driftmonitor import Cron
from .modelversion import ModelSource, ModelVersionSpec
from .trainingrun import TrainingRunSpec

TRIGGER_ANNOTATION = "mlops.dev/trigger"


class TrainingRunTemplate(TrainingRunSpec):
    """A TrainingRun's spec without datasetRef: each run trains on the pipeline's datasetRef."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (  # type: ignore[assignment]
        *TrainingRunSpec.cel_rules,
        CelRule(
            rule="!has(self.datasetRef)",
            message="leave datasetRef out of trainingRunTemplate: runs train on the pipeline's datasetRef",
            check=lambda s: s.dataset_ref is None,
        ),
    )

    dataset_ref: LocalObjectReference | None = Field(  # type: ignore[assignment]
        default=None, description="Must be empty: the pipeline's spec.datasetRef is used."
    )
    # Each run's TrainingRun is immutable; the template is not (the next run takes the change).
    model: str = Field(
        description="Architecture name in the trainer's model registry, e.g. digits-cnn.",
        min_length=1,
        max_length=128,
    )


class ModelVersionTemplate(ModelVersionSpec):
    """A ModelVersion's spec without source: each run's ModelVersion promotes the run's TrainingRun."""

    cel_rules: ClassVar[tuple[CelRule, ...]] = (  # type: ignore[assignment]
        CelRule(
            rule="!has(self.source)",
            message="leave source out of modelVersionTemplate: a version's source is its run's TrainingRun",
            check=lambda s: s.source is None,
        ),
    )

    source: ModelSource | None = Field(  # type: ignore[assignment]
        default=None, description="Must be empty: source.trainingRunRef is the run's TrainingRun."
    )


class Triggers(ApiModel):
    """What starts a run (the manual trigger is the annotation mlops.dev/trigger: a new value runs once)."""

    on_dataset_change: bool = Field(
        default=True,
        description="Run when the training Dataset's fingerprint differs from the last run's.",
    )
    schedule: Cron | None = Field(
        default=None, description="Also run on this cron schedule (UTC), e.g. '0 3 * * *'."
    )
    drift_monitor_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "Run when this DriftMonitor turns Drifted, unless the training data is unchanged since the "
            "last successful run (then the DriftUnfixable condition says so instead)."
        ),
    )


ConcurrencyPolicy = Literal["Allow", "Forbid", "Replace"]


class ModelPipelineSpec(ApiModel):
    """Desired state of a ModelPipeline."""

    dataset_ref: LocalObjectReference = Field(description="The training Dataset, in the same namespace.")
    training_run_template: TrainingRunTemplate = Field(
        description="Spec of each run's TrainingRun, without datasetRef."
    )
    model_version_template: ModelVersionTemplate = Field(
        description="Spec of each run's ModelVersion, without source."
    )
    triggers: Triggers = nested(Triggers, "What starts a run.")
    concurrency_policy: ConcurrencyPolicy = Field(
        default="Forbid",
        description=(
            "As a CronJob's: Allow runs concurrently; Forbid skips a trigger while a run is active "
            "(recorded as Skipped); Replace deletes the active run's TrainingRun and ModelVersion "
            "(Superseded) and starts the new one."
        ),
    )
    successful_runs_history_limit: int = Field(
        default=3, ge=0, le=100, description="Finished successful runs whose children are kept."
    )
    failed_runs_history_limit: int = Field(
        default=1, ge=0, le=100, description="Finished unsuccessful runs whose children are kept."
    )
    suspend: bool = Field(default=False, description="Start no new runs; active ones continue.")


RunOutcome = Literal["Running", "Succeeded", "Rejected", "Failed", "Superseded", "Skipped"]
TriggerKind = Literal["DatasetChange", "Schedule", "Drift", "Manual"]


class PipelineRun(ApiModel):
    """One run (or one skipped trigger) of the pipeline."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    name: str = Field(description="The run, <pipeline>-<number>.", max_length=253)
    number: int = Field(ge=1, description="The run's number.")
    trigger: TriggerKind = Field(description="What started it.")
    trigger_key: str | None = Field(
        default=None,
        max_length=256,
        description="The trigger's identity (fingerprint, schedule time, annotation value, drift time).",
    )
    dataset_fingerprint: str | None = Field(
        default=None, description="The Dataset's fingerprint at the trigger."
    )
    training_run: ObjectName | None = Field(default=None, description="Its TrainingRun.")
    model_version: ObjectName | None = Field(default=None, description="Its ModelVersion.")
    start_time: str | None = Field(default=None, description="When it started.")
    completion_time: str | None = Field(default=None, description="When it finished.")
    outcome: RunOutcome = Field(description="Running, Succeeded, Rejected, Failed, Superseded or Skipped.")
    message: str | None = Field(default=None, max_length=1024, description="Why, in words.")
    children_deleted: bool | None = Field(
        default=None, description="Its TrainingRun and ModelVersion were deleted (history limit, Replace)."
    )


class ModelPipelineStatus(StatusBase):
    """Observed state of a ModelPipeline."""

    phase: Literal["Pending", "Idle", "Running", "Suspended", "Failed"] | None = Field(
        default=None, description="Pending (waiting for the Dataset), Idle, Running, Suspended or Failed."
    )
    runs: list[PipelineRun] = Field(
        default_factory=list, max_length=64, description="The run history, oldest first (capped)."
    )
    active: list[str] = Field(default_factory=list, max_length=64, description="Runs in progress.")
    last_run_number: int | None = Field(default=None, description="The highest run number used.")
    last_trigger: str | None = Field(default=None, description="What started the last run.")
    last_trigger_time: str | None = Field(default=None, description="When the last trigger fired.")
    last_outcome: str | None = Field(default=None, description="Outcome of the last run.")
    next_schedule_time: str | None = Field(default=None, description="When the schedule is next due.")
    last_schedule_time: str | None = Field(default=None, description="The last schedule time handled.")
    last_dataset_fingerprint: str | None = Field(
        default=None, description="The Dataset fingerprint the last triggered run was started on."
    )
    last_drift_transition: str | None = Field(
        default=None, description="The DriftMonitor's Drifted transition time last handled."
    )
    last_manual_trigger: str | None = Field(
        default=None, description="The mlops.dev/trigger annotation value last handled."
    )
    latest_promoted: str | None = Field(
        default=None,
        description="The latest promoted ModelVersion (set by the champion/challenger gate: coming).",
    )
