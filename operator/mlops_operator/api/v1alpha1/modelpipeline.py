"""ModelPipeline: continuous training.

A pipeline holds the templates of a TrainingRun and a ModelVersion, the training Dataset and its
triggers: the Dataset's fingerprint changed, a cron schedule, a DriftMonitor turning `Drifted`, and
the manual annotation `mlops.dev/trigger` (any new value triggers once). Each trigger makes one run:
a TrainingRun `<pipeline>-<n>` on the Dataset and a ModelVersion `<pipeline>-<n>` of it, owned by the
pipeline, with CronJob's concurrency policies and history limits.

A run whose ModelVersion is Ready goes through the champion/challenger gate (`spec.promotion`): the
version the pipeline promoted last (the champion) is scored again on the same fresh data the new one
(the challenger) was evaluated on, and the challenger must beat it by each metric's margin. Then,
after an optional manual approval (the annotation `mlops.dev/approve` naming the run), it is
Promoted: `status.latestPromoted` names it, and InferenceDeployments that follow the pipeline
(`spec.modelVersionFrom.pipelineRef`) canary to it. A rejected challenger leaves serving untouched.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from .common import ApiModel, CelRule, LocalObjectReference, ObjectName, StatusBase, nested
from .driftmonitor import Cron
from .modelversion import ModelSource, ModelVersionSpec
from .trainingrun import TrainingRunSpec

TRIGGER_ANNOTATION = "mlops.dev/trigger"
APPROVE_ANNOTATION = "mlops.dev/approve"


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


class MetricMargin(ApiModel):
    """One metric the challenger must win on."""

    name: str = Field(
        description="Metric name as the evaluator reports it, e.g. accuracy.", min_length=1, max_length=128
    )
    direction: Literal["HigherIsBetter", "LowerIsBetter"] = Field(
        default="HigherIsBetter", description="HigherIsBetter (accuracy) or LowerIsBetter (a loss, latency)."
    )
    margin: float = Field(
        default=0.0,
        ge=0,
        description=(
            "How much better the challenger must be: challenger - champion >= margin (HigherIsBetter), "
            "champion - challenger >= margin (LowerIsBetter). 0: at least as good."
        ),
    )


class ChampionGate(ApiModel):
    """How a challenger is compared with the champion: both scored on the same data, per metric."""

    cel_rules = (
        CelRule(
            rule="self.metrics.all(m, self.metrics.exists_one(o, o.name == m.name))",
            message="each metric may appear once in championGate.metrics",
            check=lambda g: len({m.name for m in g.metrics}) == len(g.metrics),
        ),
    )

    dataset_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "The fresh labelled data both are scored on (its held-out split); also the run's ModelVersion "
            "is evaluated on it. Defaults to the pipeline's datasetRef."
        ),
    )
    split: str = Field(
        default="test",
        description="Held-out split of that Dataset to score.",
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$",
    )
    metrics: list[MetricMargin] = Field(
        min_length=1, max_length=16, description="Metrics the challenger must win on, each by its margin."
    )


class Promotion(ApiModel):
    """What promotes a run's ModelVersion (what InferenceDeployments that follow the pipeline serve)."""

    champion_gate: ChampionGate | None = Field(
        default=None,
        description=(
            "Compare each challenger with the champion (the version promoted last) on the same fresh data; "
            "empty: every Ready version is promoted."
        ),
    )
    approval: Literal["Automatic", "Manual"] = Field(
        default="Automatic",
        description=(
            "Manual: a version that passed the gate waits (AwaitingApproval) until the annotation "
            "mlops.dev/approve on the pipeline names its run, e.g. `kubectl annotate mp digits "
            "mlops.dev/approve=digits-4 --overwrite`."
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
    promotion: Promotion = nested(Promotion, "The champion/challenger gate and approval.")


RunOutcome = Literal["Running", "AwaitingApproval", "Promoted", "Rejected", "Failed", "Superseded", "Skipped"]
TriggerKind = Literal["DatasetChange", "Schedule", "Drift", "Manual"]


class MetricComparison(ApiModel):
    """One metric of the gate: both figures on the same data, and the verdict."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    name: str = Field(description="The metric.", max_length=128)
    challenger: float | None = Field(default=None, description="The run's version's figure.")
    champion: float | None = Field(default=None, description="The champion's figure on the same data.")
    direction: str = Field(description="HigherIsBetter or LowerIsBetter.", max_length=16)
    margin: float = Field(description="The margin it had to win by.")
    passed: bool = Field(description="The challenger won by the margin.")


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
    outcome: RunOutcome = Field(
        description="Running, AwaitingApproval, Promoted, Rejected, Failed, Superseded or Skipped."
    )
    message: str | None = Field(default=None, max_length=1024, description="Why, in words.")
    children_deleted: bool | None = Field(
        default=None, description="Its TrainingRun and ModelVersion were deleted (history limit, Replace)."
    )
    champion: ObjectName | None = Field(
        default=None, description="The ModelVersion it was compared with (promoted before it)."
    )
    champion_evaluation: ObjectName | None = Field(
        default=None,
        description="The ModelVersion <run>-champion that scored the champion on the same data.",
    )
    gate_dataset_fingerprint: str | None = Field(
        default=None, description="The gate Dataset's fingerprint both versions were scored at."
    )
    comparison: list[MetricComparison] = Field(
        default_factory=list, max_length=16, description="The gate, metric by metric."
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
        description=(
            "The ModelVersion promoted last: what InferenceDeployments that follow the pipeline serve."
        ),
    )
    latest_promoted_run: str | None = Field(default=None, description="The run that promoted it.")
    latest_promoted_time: str | None = Field(default=None, description="When it was promoted.")
