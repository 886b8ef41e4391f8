"""Operator configuration, read once at startup from `MLOPS_*` environment variables."""

from __future__ import annotations

import secrets
from typing import Any, Literal
from urllib.parse import urlsplit

import kopf
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .api.v1alpha1 import GROUP

# Where kopf would keep per-object progress and the last-handled spec. Our kinds have only raw event
# handlers now, so kopf writes none of it to them; the choice stays fixed (annotations, never status)
# so that a handler added later does not re-handle every object under a new storage.
STORAGE_PREFIX = GROUP


class OperatorConfig(BaseSettings):
    """Settings of one operator process. Each field maps to `MLOPS_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="MLOPS_", env_nested_delimiter="__", extra="ignore")

    namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces to watch; empty watches the whole cluster (JSON list in the env var).",
    )
    log_format: Literal["text", "json"] = Field(default="text", description="Log line format.")
    verbose: bool = Field(default=False, description="Debug logging.")
    metrics_port: int = Field(
        default=8000, ge=0, le=65535, description="Prometheus /metrics port; 0 disables."
    )
    health_port: int = Field(
        default=8080, ge=0, le=65535, description="Liveness/readiness /healthz port; 0 disables."
    )
    field_manager: str = Field(
        default="mlops-operator", description="Server-side apply field manager of every write."
    )
    peering_name: str | None = Field(
        default=None,
        description=(
            "kopf peering object for HA: of the replicas sharing it, only the one with the highest "
            "priority works, the others stand by; empty runs standalone. Needs crds/kopf.dev_peerings.yaml "
            "and a (Cluster)KopfPeering object of that name."
        ),
    )
    peering_priority: int = Field(
        default_factory=lambda: secrets.randbelow(2**31),
        description=(
            "This replica's peering priority. Default: random, so replicas of one Deployment differ "
            "(equal priorities make kopf pause them all)."
        ),
    )
    peering_lifetime_seconds: int = Field(
        default=60, ge=10, description="How long a silent peer counts as alive: the standby's takeover time."
    )
    workers: int = Field(
        default=16,
        ge=1,
        le=128,
        description=(
            "Reconcile worker threads. One object is reconciled by one worker at a time; a burst of "
            "changes to one object is coalesced into one reconcile."
        ),
    )
    # -- the reconcile engine (README "Failure modes") --
    resync_seconds: float = Field(
        default=600.0,
        ge=0,
        description=(
            "Every object is reconciled again from the cache about this often (jittered by +-10%, no "
            "API request): the last line of defence behind the watches, as controller-runtime's "
            "SyncPeriod. 0 disables."
        ),
    )
    watch_timeout_seconds: int = Field(
        default=300,
        ge=5,
        le=3600,
        description="Server-side timeout of one watch request; the informer re-watches after it.",
    )
    retry_min_seconds: float = Field(
        default=1.0,
        gt=0,
        description=(
            "First retry of a reconcile that failed, or that reported a transient reason (an outage, "
            "a missing Secret); later retries wait half the time it has been failing, or double."
        ),
    )
    retry_max_seconds: float = Field(
        default=300.0, gt=0, description="Longest wait between retries of a failing or waiting object."
    )
    max_workers_per_namespace: int = Field(
        default=0,
        ge=0,
        description=(
            "Reconcile workers one namespace may hold at once, so one tenant's slow S3 or registry "
            "never takes every worker; 0: half the workers (at least 1)."
        ),
    )
    watch_secrets: bool = Field(
        default=True,
        description=(
            "Watch Secrets' metadata (never their data) so a Secret a resource names wakes it when it "
            "appears or changes. Off: such a resource is retried with backoff instead, and the "
            "operator needs no list/watch on Secrets."
        ),
    )
    start_deadline_seconds: int = Field(
        default=600,
        ge=10,
        description=(
            "Default time an attempt's pods may take to start running (scheduling, image pull, "
            "container creation) before the attempt fails with StartDeadlineExceeded; a TrainingRun's "
            "spec.scheduling.startDeadlineSeconds overrides it."
        ),
    )
    stage_deadline_seconds: int = Field(
        default=4 * 3600,
        ge=1,
        description=(
            "Default time one compile or evaluate attempt of a ModelVersion may run, from its Job's "
            "start (activeDeadlineSeconds), before it fails with StageDeadlineExceeded; the spec's "
            "compile.deadlineSeconds and evaluation.deadlineSeconds override it."
        ),
    )
    trainer_image: str = Field(
        default="ghcr.io/mlops-operator/trainer:0.1.0",
        description="Image of training, compile and evaluate workloads when a spec names none.",
    )
    workload_tolerations: list[dict[str, Any]] = Field(
        default_factory=list,
        description=(
            "Tolerations (JSON list) added to every workload pod; the dev control plane sets the kwok "
            "taint here so simulated GPU nodes accept pods. Empty in production."
        ),
    )
    # -- tenant safety (README "Tenant safety") --
    s3_endpoint_allowlist: list[str] = Field(
        default_factory=list,
        description=(
            "S3 endpoints (JSON list of `host` or `host:port`; `*.` prefix for subdomains, `[v6]` "
            "literals) a Dataset's endpointURL may name; the operator sends no request elsewhere. "
            "AWS's own S3 endpoints are always allowed; empty allows only those."
        ),
    )
    registry_endpoint_allowlist: list[str] = Field(
        default_factory=list,
        description=(
            "Model registry endpoints (same patterns as the S3 allow-list) a ModelVersion's "
            "registry.trackingURI may name; the operator sends no registry request elsewhere. Unset "
            "trackingURI (W&B's own cloud) is always allowed."
        ),
    )
    registry_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="Timeout of one request to a model registry."
    )
    registry_alias_check_seconds: float = Field(
        default=300.0,
        ge=0,
        description=(
            "How often an InferenceDeployment reads the registry to confirm its serving aliases are "
            "still where it put them (a person may move or delete one there), putting back what was "
            "lost; 0: never."
        ),
    )
    prometheus_address: str | None = Field(
        default=None,
        description=(
            "Prometheus the canary analysis queries (an http(s) URL with a host; checked at startup), "
            "read by Argo Rollouts, not the operator. Unset or empty: canaries run without analysis "
            "(each analysis step holds the canary for its duration, unmeasured; the InferenceDeployment "
            "says AnalysisDisabled) unless the spec names an allowed rollout.analysis.prometheusAddress."
        ),
    )
    prometheus_endpoint_allowlist: list[str] = Field(
        default_factory=list,
        description=(
            "Prometheus endpoints (JSON list, the S3 allow-list's patterns) an InferenceDeployment's "
            "rollout.analysis.prometheusAddress may name: the cluster-wide Argo Rollouts controller "
            "queries it. MLOPS_PROMETHEUS_ADDRESS is always allowed; empty allows only that one."
        ),
    )

    @field_validator("prometheus_address", mode="after")
    @classmethod
    def _prometheus_url(cls, value: str | None) -> str | None:
        """Empty is unset; anything else must be an http(s) URL with a host, or the operator refuses
        to start (an AnalysisTemplate with a bad address aborts every canary)."""
        if value is None or not value.strip():
            return None
        parts = urlsplit(value.strip())
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError as error:
            raise ValueError(f"MLOPS_PROMETHEUS_ADDRESS {value!r}: {error}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError(
                f"MLOPS_PROMETHEUS_ADDRESS {value!r} is not an http(s) URL with a host "
                "(e.g. http://prometheus.monitoring.svc:9090); leave it empty to run canaries unmeasured"
            )
        return value.strip()

    triton_cpu_backend: Literal["onnxruntime", "python"] = Field(
        default="onnxruntime",
        description=(
            "Triton backend of ONNX models served on CPU (resources.gpus: 0): onnxruntime (Triton's "
            "images), or python (a model.py running onnxruntime: for a tritonserver without the ONNX "
            "Runtime backend, like the one the local control plane runs)."
        ),
    )
    manifest_max_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description=(
            "Largest Dataset manifest (manifestURI) the operator reads; a larger one is refused "
            "(Ready=False, ManifestTooLarge) before it is downloaded."
        ),
    )
    dataset_max_objects: int = Field(
        default=1_000_000,
        ge=1,
        description=(
            "Most objects the operator lists for one Dataset; past it the listing stops (Ready=False, "
            "TooManyObjects) and is not tried again until the Dataset's spec or this setting changes. "
            "Listing streams in bounded memory; this bounds the time one Dataset holds a worker."
        ),
    )
    scratch_size_limit: str = Field(
        default="20Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$",
        description="sizeLimit of a workload pod's scratch emptyDir (/tmp), evicted over it.",
    )
    shm_size_limit: str | None = Field(
        default=None,
        pattern=r"^[0-9]+(\.[0-9]+)?([KMGTPE]i?)?$",
        description=(
            "sizeLimit of a workload pod's /dev/shm (memory-backed; counts against the pod's memory). "
            "Unset: half the worker's resources.memory, or 1Gi when the spec sets no memory."
        ),
    )


def configure_kopf(settings: kopf.OperatorSettings, config: OperatorConfig) -> None:
    """Apply our choices to kopf's settings object (called from the startup handler)."""
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=STORAGE_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=STORAGE_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    # Our own events say what happened; kopf's per-handler "Handler succeeded" events are noise.
    settings.posting.level = 100
    settings.peering.standalone = config.peering_name is None
    if config.peering_name:
        settings.peering.name = config.peering_name
        settings.peering.mandatory = True
        settings.peering.priority = config.peering_priority
        settings.peering.lifetime = config.peering_lifetime_seconds
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
