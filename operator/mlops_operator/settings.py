"""Operator configuration, read once at startup from `MLOPS_*` environment variables."""

from __future__ import annotations

import secrets
from typing import Any, Literal

import kopf
from pydantic import Field
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
    start_deadline_seconds: int = Field(
        default=600,
        ge=10,
        description=(
            "Default time an attempt's pods may take to start running (scheduling, image pull, "
            "container creation) before the attempt fails with StartDeadlineExceeded; a TrainingRun's "
            "spec.scheduling.startDeadlineSeconds overrides it."
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
    prometheus_address: str | None = Field(
        default=None,
        description=(
            "Prometheus the canary analysis queries (an InferenceDeployment's "
            "rollout.analysis.prometheusAddress overrides it); read by Argo Rollouts, not the operator."
        ),
    )
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
