"""DriftMonitor: is the served model still seeing the data it was trained on?

A check compares the profile of the data the served ModelVersion was trained on (its lineage's
TrainingRun's pinned Dataset) with a Dataset of newly landed data, column by column, with
Evidently's data-drift tests, in a Job of the trainer image (`mlops-trainer drift`, the contract in
`mlops_contract.drift`). It runs when the current Dataset's fingerprint (or the model, or the spec)
differs from the last checked one, and on the optional cron schedule.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from croniter import croniter
from pydantic import Field

from .common import (
    ApiModel,
    CelRule,
    Image,
    LocalObjectReference,
    ObjectName,
    Quantity,
    Scheduling,
    StatusBase,
    nested,
)

# Five cron fields (minute hour day-of-month month day-of-week) or a @macro. CEL checks the shape;
# the operator (croniter) checks the values, and refuses a spec with a bad one as InvalidSpec.
CRON_FIELD = r"[0-9A-Za-z*?/,#-]+"
CRON_CEL = (
    "self.matches('^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|"
    f"{CRON_FIELD}( +{CRON_FIELD}){{4}})$')"
)


def is_cron(value: str) -> bool:
    """A standard five-field cron expression (or @daily…) croniter can follow."""
    fields = value.split()
    if value.startswith("@"):
        return len(fields) == 1 and croniter.is_valid(value)
    return len(fields) == 5 and croniter.is_valid(value)


Cron = Annotated[
    str,
    Field(min_length=1, max_length=128),
    CelRule(
        rule=CRON_CEL,
        message="must be a cron expression: five fields (minute hour day month weekday) or @daily etc.",
        check=is_cron,
    ),
]

DriftMethod = Literal["psi", "ks", "wasserstein", "jensenshannon"]
ColumnName = Annotated[str, Field(min_length=1, max_length=128)]


class DriftResources(ApiModel):
    """CPU and memory of the check's pod (it runs on CPU)."""

    cpu: Quantity | None = Field(default=None, description="CPU request and limit, e.g. 2, 500m.")
    memory: Quantity | None = Field(default=None, description="Memory request and limit, e.g. 4Gi.")


class DriftMonitorSpec(ApiModel):
    """Desired state of a DriftMonitor."""

    cel_rules = (
        CelRule(
            rule="has(self.modelVersionRef) != has(self.inferenceDeploymentRef)",
            message="exactly one of modelVersionRef or inferenceDeploymentRef must be set",
            check=lambda s: (s.model_version_ref is None) != (s.inference_deployment_ref is None),
        ),
    )

    model_version_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "The ModelVersion whose training data is the reference (its lineage's TrainingRun's "
            "Dataset) and whose compiled artifact scores the current data. It must be Ready."
        ),
    )
    inference_deployment_ref: LocalObjectReference | None = Field(
        default=None,
        description=(
            "Follow what an InferenceDeployment serves: its status.stableVersion is the ModelVersion "
            "checked; a promotion makes the next check use the new version."
        ),
    )
    current_dataset_ref: LocalObjectReference = Field(
        description=(
            "The Dataset of newly landed data. A new fingerprint (its refresh notices new data) starts "
            "a check; its S3 endpoint and credentials are the check's."
        )
    )
    schedule: Cron | None = Field(
        default=None,
        description=(
            "Also check on this cron schedule (UTC), e.g. '0 * * * *'; empty: only when the current "
            "data, the model or this spec changes."
        ),
    )
    method: DriftMethod | None = Field(
        default=None,
        description=(
            "Statistical test of the columns; empty: Evidently chooses per column. ks and wasserstein "
            "test numbers only: with them Evidently chooses the test of the categorical predicted_class."
        ),
    )
    column_threshold: float | None = Field(
        default=None,
        ge=0,
        le=1000,
        description=(
            "The method's drift threshold per column (with ks or wasserstein: of the numerical columns); "
            "empty: Evidently's default for the method."
        ),
    )
    drift_share_threshold: float = Field(
        default=0.5,
        ge=0.01,
        le=1,
        description="The data drifted when at least this share of the tested columns drifted.",
    )
    columns: list[ColumnName] = Field(
        default_factory=list,
        max_length=256,
        description=(
            "Columns to test (image statistics, model outputs, tabular features); empty: all of them."
        ),
    )
    max_samples: int | None = Field(
        default=None,
        ge=10,
        le=10_000_000,
        description="Rows sampled from each side; empty: the workload's default (5000).",
    )
    image: Image | None = Field(default=None, description="Check image; empty: the operator's trainer image.")
    resources: DriftResources = nested(DriftResources, "CPU and memory of the check's pod.")
    scheduling: Scheduling = nested(Scheduling, "Scheduling of the check Jobs.")
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount of the check Jobs (default: the namespace's default)."
    )
    deadline_seconds: int | None = Field(
        default=None,
        ge=1,
        le=7 * 24 * 3600,
        description=(
            "Longest one check may run (the Job's activeDeadlineSeconds); empty: the operator's "
            "MLOPS_STAGE_DEADLINE_SECONDS."
        ),
    )


class DriftColumn(ApiModel):
    """One tested column of the last check."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    name: str = Field(description="Column name.", max_length=128)
    method: str | None = Field(default=None, description="Statistical test used.", max_length=64)
    score: float | None = Field(default=None, description="The test's score (p-value or distance).")
    threshold: float | None = Field(default=None, description="The test's threshold.")
    drifted: bool = Field(default=False, description="Whether this column drifted.")


class LastCheck(ApiModel):
    """What the last finished check was run on (a check is due when the inputs differ)."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    number: int = Field(ge=1, description="The check's number (its Job is <name>-check-<number>-a<attempt>).")
    trigger: str | None = Field(default=None, description="NewData, ModelChanged, SpecChanged or Schedule.")
    time: str | None = Field(default=None, description="When it finished.")
    outcome: Literal["Drifted", "NoDrift", "Failed"] | None = Field(default=None, description="Its result.")
    model_version: str | None = Field(default=None, description="The ModelVersion it checked.")
    current_fingerprint: str | None = Field(default=None, description="The current Dataset's fingerprint.")
    reference_fingerprint: str | None = Field(default=None, description="The training Dataset's fingerprint.")
    engine_uri: str | None = Field(
        default=None, alias="engineURI", description="The artifact that scored it."
    )
    spec_hash: str | None = Field(default=None, description="Hash of the check's spec fields.")


class RunningCheck(LastCheck):
    """The check in progress."""

    job_name: str = Field(description="Its current attempt's Job.")
    attempt: int = Field(default=1, ge=1, description="Attempt of this check.")
    output_uri: str | None = Field(default=None, alias="outputURI", description="Where it writes.")
    start_time: str | None = Field(default=None, description="When the check started.")
    next_attempt_time: str | None = Field(
        default=None, description="While waiting out a retry backoff: when the next attempt starts."
    )


DriftMonitorPhase = Literal["Pending", "Checking", "NoDrift", "Drifted", "Failed"]


class DriftMonitorStatus(StatusBase):
    """Observed state of a DriftMonitor."""

    phase: DriftMonitorPhase | None = Field(
        default=None,
        description=(
            "Pending (waiting for the model or the data), Checking, NoDrift, Drifted, or Failed (the "
            "last check failed; Ready says why)."
        ),
    )
    model_version: str | None = Field(default=None, description="The ModelVersion checked last.")
    last_check_time: str | None = Field(default=None, description="When the last successful check finished.")
    next_check_time: str | None = Field(default=None, description="When the schedule is next due.")
    reference_fingerprint: str | None = Field(
        default=None, description="Fingerprint of the training data the last check compared against."
    )
    current_fingerprint: str | None = Field(
        default=None, description="Fingerprint of the current data of the last successful check."
    )
    drift_share: float | None = Field(
        default=None, ge=0, le=1, description="Drifted share of tested columns."
    )
    share_threshold: float | None = Field(default=None, description="The share threshold the check used.")
    column_count: int | None = Field(default=None, description="Columns tested.")
    drifted_count: int | None = Field(default=None, description="Columns that drifted.")
    drifted_columns: str | None = Field(
        default=None,
        description="Names of the drifted columns, comma-separated (for kubectl get).",
        max_length=1024,
    )
    columns: list[DriftColumn] = Field(
        default_factory=list,
        max_length=64,
        description="Per-column results of the last check, drifted first (at most the summary's).",
    )
    reference_rows: int | None = Field(default=None, description="Rows sampled from the reference.")
    current_rows: int | None = Field(default=None, description="Rows sampled from the current data.")
    report_uri: str | None = Field(default=None, alias="reportURI", description="Evidently's HTML report.")
    result_uri: str | None = Field(default=None, alias="resultURI", description="The full result (JSON).")
    reference_uri: str | None = Field(
        default=None,
        alias="referenceURI",
        description="Where the reference profile is kept (next to the model).",
    )
    job_name: str | None = Field(default=None, description="The check Job in progress.")
    check: RunningCheck | None = Field(default=None, description="The check in progress.")
    last_check: LastCheck | None = Field(default=None, description="The last finished check's inputs.")
    pinned: dict[str, Any] | None = Field(
        default=None,
        description=(
            "While a check runs: the current Dataset's spec, the URIs and the image its attempts are "
            "built from."
        ),
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
