"""TrainingRun: one training of one model on one Dataset."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from .common import (
    S3_URI,
    ApiModel,
    CelRule,
    Image,
    LabelValue,
    LocalObjectReference,
    ObjectName,
    Quantity,
    QueueStatus,
    Scheduling,
    SecretKeyReference,
    StatusBase,
    nested,
)

IMMUTABLE = "self == oldSelf"


class WorkerResources(ApiModel):
    """Resources of one worker pod (one node of a distributed run)."""

    gpus_per_worker: int = Field(
        default=1, ge=0, le=16, description="nvidia.com/gpu requested by each worker pod; 0 trains on CPU."
    )
    gpu_product: LabelValue | None = Field(
        default=None,
        description=(
            "GPU model to run on: the value of node label nvidia.com/gpu.product, e.g. NVIDIA-H100-80GB-HBM3 "
            "(a label value: no spaces)."
        ),
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit per worker, e.g. 8, 500m.")
    memory: Quantity | None = Field(
        default=None, description="Memory request and limit per worker, e.g. 64Gi."
    )


class Distributed(ApiModel):
    """How the run spreads over nodes: torchrun with one pod per node."""

    nodes: int = Field(default=1, ge=1, le=256, description="Number of worker pods (torchrun --nnodes).")
    procs_per_node: int = Field(
        default=1,
        ge=1,
        le=16,
        description="Processes per pod (torchrun --nproc-per-node), usually one per GPU.",
    )


class Checkpointing(ApiModel):
    """Where and how often the trainer checkpoints; a retried or resumed attempt starts from here."""

    uri: str = Field(description="S3 prefix for checkpoints.", pattern=S3_URI, max_length=1024)
    interval_steps: int = Field(default=500, ge=1, description="Checkpoint every this many optimizer steps.")


class Output(ApiModel):
    """Where the trained model (state dict, ONNX, metadata) is written."""

    uri: str = Field(description="S3 prefix for the model artifacts.", pattern=S3_URI, max_length=1024)


class WandbTracking(ApiModel):
    """Weights & Biases experiment tracking."""

    project: str = Field(description="W&B project.", min_length=1, max_length=128)
    entity: str | None = Field(default=None, description="W&B entity (team or user).", max_length=128)
    api_key_secret_ref: SecretKeyReference | None = Field(
        default=None, description="Secret key holding the W&B API key; required unless mode is offline."
    )
    mode: Literal["online", "offline"] = Field(default="online", description="online or offline.")


class Tracking(ApiModel):
    """Experiment tracking."""

    cel_rules = (
        CelRule(
            rule="!has(self.wandb) || self.wandb.mode == 'offline' || has(self.wandb.apiKeySecretRef)",
            message="wandb.apiKeySecretRef is required unless wandb.mode is offline",
            check=lambda t: (
                t.wandb is None or t.wandb.mode == "offline" or t.wandb.api_key_secret_ref is not None
            ),
        ),
    )

    wandb: WandbTracking | None = Field(default=None, description="Track the run in Weights & Biases.")


class RetryPolicy(ApiModel):
    """How retryable failures (eviction, preemption, node loss, retryable exit codes) are retried."""

    cel_rules = (
        CelRule(
            rule="self.backoffSeconds <= self.maxBackoffSeconds",
            message="backoffSeconds must not exceed maxBackoffSeconds",
            check=lambda r: r.backoff_seconds <= r.max_backoff_seconds,
        ),
    )

    max_attempts: int = Field(default=3, ge=1, le=20, description="Attempts in all, the first one included.")
    backoff_seconds: int = Field(default=30, ge=0, le=86400, description="Wait before the second attempt.")
    max_backoff_seconds: int = Field(
        default=600, ge=0, le=86400, description="Cap of the exponential backoff between attempts."
    )


class TrainingRunSpec(ApiModel):
    """Desired state of a TrainingRun. Immutable once started, except suspend and ttlSecondsAfterFinished."""

    cel_rules = (
        CelRule(
            rule=(
                "self.resources.gpusPerWorker == 0 || "
                "self.distributed.procsPerNode <= self.resources.gpusPerWorker"
            ),
            message="distributed.procsPerNode must not exceed resources.gpusPerWorker",
            check=lambda s: (
                s.resources.gpus_per_worker == 0
                or s.distributed.procs_per_node <= s.resources.gpus_per_worker
            ),
        ),
    )

    dataset_ref: LocalObjectReference = Field(
        description="Dataset to train on, in the same namespace.",
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": IMMUTABLE, "message": "datasetRef is immutable"}]
        },
    )
    model: str = Field(
        description="Architecture name in the trainer's model registry, e.g. digits-cnn.",
        min_length=1,
        max_length=128,
        json_schema_extra={
            "x-kubernetes-validations": [{"rule": IMMUTABLE, "message": "model is immutable"}]
        },
    )
    image: Image | None = Field(
        default=None,
        description="Trainer image (no whitespace); unset uses the operator's configured trainer image.",
    )
    command: list[str] | None = Field(
        default=None, description="Override the image's entrypoint.", max_length=64
    )
    args: list[str] | None = Field(
        default=None, description="Override the trainer's arguments.", max_length=256
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="Free-form hyperparameters handed to the trainer as JSON (e.g. epochs, lr, batchSize).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    resources: WorkerResources = nested(WorkerResources, "Resources of each worker pod.")
    distributed: Distributed = nested(Distributed, "Multi-node / multi-process layout (torchrun).")
    checkpoint: Checkpointing | None = Field(
        default=None, description="Checkpointing; without it a retried attempt starts from scratch."
    )
    output: Output = Field(description="Where the trained model is written.")
    tracking: Tracking = nested(Tracking, "Experiment tracking.")
    retry: RetryPolicy = nested(RetryPolicy, "Retry policy for retryable failures.")
    suspend: bool = Field(
        default=False,
        description="Suspend the run: the workload is asked to checkpoint and is deleted; false resumes it.",
    )
    ttl_seconds_after_finished: int | None = Field(
        default=None,
        ge=0,
        description="Delete the run's children this long after it finishes; the TrainingRun and status stay.",
    )
    scheduling: Scheduling = nested(Scheduling, "Scheduling constraints of the worker pods.")
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount the pods run as; empty uses the namespace's default."
    )


TrainingRunPhase = Literal[
    "Pending", "WaitingForDataset", "Queued", "Starting", "Running", "Suspended", "Succeeded", "Failed"
]


class AttemptFailure(ApiModel):
    """Why one attempt failed."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    attempt: int = Field(description="The attempt, starting at 1.")
    reason: str = Field(
        description=(
            "Evicted, Preempted, NodeLost, OOMKilled, StartDeadlineExceeded, QueueTimeoutExceeded, the "
            "trainer's reason."
        ),
        max_length=128,
    )
    message: str = Field(default="", description="The pod's or the trainer's message.", max_length=1024)
    retryable: bool = Field(description="Whether another attempt could help.")
    exit_code: int | None = Field(default=None, description="The trainer's exit code, when it exited.")
    time: str | None = Field(default=None, description="When the failure was seen.")


class PinnedAttemptInputs(ApiModel):
    """The inputs of every attempt of a run, fixed when it started."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    spec: dict[str, Any] = Field(
        description="The TrainingRun's spec as it started.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    dataset_spec: dict[str, Any] = Field(
        description="The Dataset's spec when the run started (its source and credentials reference).",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    image: str = Field(description="The trainer image every attempt runs.", max_length=512)


class TrainingRunStatus(StatusBase):
    """Observed state of a TrainingRun."""

    phase: TrainingRunPhase | None = Field(
        default=None,
        description=(
            "Pending, WaitingForDataset, Queued (waiting for capacity: see queue), Starting, Running, "
            "Suspended, Succeeded or Failed."
        ),
    )
    attempt: int | None = Field(default=None, description="Current attempt, starting at 1.")
    dataset_fingerprint: str | None = Field(
        default=None, description="Fingerprint of the Dataset when the run started (lineage)."
    )
    start_time: str | None = Field(default=None, description="When the first attempt started.")
    completion_time: str | None = Field(default=None, description="When the run finished.")
    job_name: str | None = Field(default=None, description="The Job running the current attempt.")
    metrics: dict[str, float] = Field(
        default_factory=dict, description="Final metrics reported by the trainer."
    )
    model_uri: str | None = Field(default=None, description="URI of the trained model artifacts.")
    checkpoint_uri: str | None = Field(default=None, description="URI of the last checkpoint.")
    wandb_run: str | None = Field(default=None, description="W&B run path (entity/project/run-id).")
    attempt_start_time: str | None = Field(
        default=None, description="When the current attempt's Job was made."
    )
    next_attempt_time: str | None = Field(
        default=None, description="When the next attempt starts, while waiting out the retry backoff."
    )
    failures: list[AttemptFailure] = Field(
        default_factory=list, description="Failed attempts, oldest first.", max_length=20
    )
    spec_hash: str | None = Field(
        default=None, description="Hash of the spec the run started with; later changes are refused."
    )
    pinned: PinnedAttemptInputs | None = Field(
        default=None,
        description=(
            "What every attempt is built from, pinned when the run started: its spec (without suspend "
            "and ttlSecondsAfterFinished), its Dataset's spec and the resolved image. Retries and "
            "resumes use it whatever the spec says now."
        ),
    )
    gpu_seconds: float | None = Field(default=None, description="GPU time consumed by all attempts so far.")
    queue: QueueStatus | None = Field(
        default=None, description="While Queued: what the run waits for, where, and since when."
    )
    queued_seconds: float | None = Field(
        default=None,
        description="Time spent Queued in finished stretches of waiting, over all attempts (not failures).",
    )
