"""InferenceDeployment: a ModelVersion served by Triton, rolled out progressively."""

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
    PodScheduling,
    Quantity,
    StatusBase,
    nested,
)
from .modelversion import RegistryAlias, _alias_reserved


class DynamicBatching(ApiModel):
    """Triton's dynamic batcher."""

    enabled: bool = Field(default=True, description="Batch requests on the server.")
    max_queue_delay_microseconds: int = Field(
        default=100, ge=0, le=10_000_000, description="Longest a request waits for a batch to fill."
    )
    preferred_batch_sizes: list[int] = Field(
        default_factory=list, description="Batch sizes the batcher aims for.", max_length=16
    )


class Triton(ApiModel):
    """Triton Inference Server settings."""

    cel_rules = (
        CelRule(
            rule=(
                "!has(self.dynamicBatching.preferredBatchSizes) || "
                "self.dynamicBatching.preferredBatchSizes.all(b, b >= 1 && b <= self.maxBatchSize)"
            ),
            message="dynamicBatching.preferredBatchSizes must lie between 1 and maxBatchSize",
            check=lambda t: all(1 <= b <= t.max_batch_size for b in t.dynamic_batching.preferred_batch_sizes),
        ),
    )

    image: Image = Field(
        default="nvcr.io/nvidia/tritonserver:25.01-py3",
        description="Triton server image (no whitespace); its TensorRT must match the engine's.",
    )
    max_batch_size: int = Field(default=8, ge=0, le=4096, description="config.pbtxt max_batch_size.")
    dynamic_batching: DynamicBatching = nested(DynamicBatching, "Dynamic batching.")
    instance_count: int = Field(default=1, ge=1, le=16, description="Model instances per GPU.")


class ServingResources(ApiModel):
    """Resources of one serving pod."""

    gpus: int = Field(default=1, ge=0, le=8, description="nvidia.com/gpu per pod; 0 serves on CPU.")
    gpu_product: LabelValue | None = Field(
        default=None,
        description=(
            "GPU model to serve on (node label nvidia.com/gpu.product, a label value); must match the one "
            "the engine was built for."
        ),
    )
    cpu: Quantity | None = Field(default=None, description="CPU request and limit, e.g. 4 or 500m.")
    memory: Quantity | None = Field(default=None, description="Memory request and limit, e.g. 16Gi.")


class PauseStep(ApiModel):
    """Pause the rollout; without a duration it waits until resumed by a person."""

    duration_seconds: int | None = Field(default=None, ge=0, le=86400, description="How long to pause.")


class AnalysisStep(ApiModel):
    """Run the analysis (success rate, latency) before going on."""

    duration_seconds: int = Field(default=300, ge=30, le=86400, description="How long to measure.")


class RolloutStep(ApiModel):
    """One canary step: exactly one of setWeight, pause or analysis."""

    cel_rules = (
        CelRule(
            rule="[has(self.setWeight), has(self.pause), has(self.analysis)].filter(x, x).size() == 1",
            message="each step sets exactly one of setWeight, pause or analysis",
            check=lambda s: (
                [s.set_weight is not None, s.pause is not None, s.analysis is not None].count(True) == 1
            ),
        ),
    )

    set_weight: int | None = Field(
        default=None, ge=0, le=100, description="Percentage of traffic sent to the canary."
    )
    pause: PauseStep | None = Field(default=None, description="Pause.")
    analysis: AnalysisStep | None = Field(default=None, description="Analysis run.")


def _weights(steps: list[RolloutStep]) -> list[int]:
    return [s.set_weight for s in steps if s.set_weight is not None]


class Analysis(ApiModel):
    """Thresholds the canary must hold; a breach aborts and rolls back."""

    success_rate_min: float = Field(
        default=0.99, ge=0, le=1, description="Lowest acceptable share of successful requests."
    )
    latency_p95_max_ms: float | None = Field(
        default=None, ge=0, description="Highest acceptable p95 request latency in milliseconds."
    )
    prometheus_address: HttpURL | None = Field(
        default=None,
        description=(
            "Prometheus to query (http(s) URL with a host, on the operator's "
            "MLOPS_PROMETHEUS_ENDPOINT_ALLOWLIST); unset uses the operator's own setting."
        ),
    )
    interval_seconds: int = Field(default=60, ge=10, le=3600, description="How often to measure.")
    initial_delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description=(
            "Wait before the first measurement, so the canary's pods have been scraped twice (a rate "
            "needs two samples) and have served; unset: intervalSeconds. An analysis step measures "
            "durationSeconds/intervalSeconds times from then on."
        ),
    )
    failure_limit: int = Field(default=1, ge=0, le=100, description="Failed measurements tolerated.")
    consecutive_error_limit: int = Field(
        default=4,
        ge=0,
        le=100,
        description=(
            "Measurements in a row that may error (Prometheus unreachable, no data) before the analysis "
            "ends in Error and the canary is aborted as unmeasurable (not as failed); Argo Rollouts' "
            "consecutiveErrorLimit. A measurement that succeeds resets the count."
        ),
    )
    inconclusive_limit: int = Field(
        default=0,
        ge=0,
        le=100,
        description=(
            "Inconclusive measurements tolerated (no requests in the window: nothing to judge) before "
            "the analysis ends Inconclusive and the rollout pauses for a person."
        ),
    )


class Rollout(ApiModel):
    """How a new model version replaces the serving one."""

    cel_rules = (
        CelRule(
            rule="self.strategy == 'canary' || !has(self.steps) || size(self.steps) == 0",
            message="steps are only allowed with strategy canary",
            check=lambda r: r.strategy == "canary" or not r.steps,
        ),
        CelRule(
            rule=(
                "!has(self.steps) || "
                "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted() && "
                "self.steps.filter(s, has(s.setWeight)).all(s, "
                "self.steps.filter(t, has(t.setWeight) && t.setWeight == s.setWeight).size() == 1)"
            ),
            message="canary setWeight values must increase from step to step",
            check=lambda r: all(
                a < b for a, b in zip(_weights(r.steps), _weights(r.steps)[1:], strict=False)
            ),
        ),
    )

    strategy: Literal["canary", "recreate"] = Field(
        default="canary",
        description=(
            "canary (Argo Rollouts steps) or recreate. Immutable: the two are different workloads "
            "(a Rollout, whose controller owns the Services' selectors, or a Deployment)."
        ),
        json_schema_extra={
            "maxLength": 8,  # bounds the transition rule's CEL cost
            "x-kubernetes-validations": [
                {
                    "rule": "self == oldSelf",
                    "message": "rollout.strategy is immutable: create a new InferenceDeployment to switch",
                }
            ],
        },
    )
    steps: list[RolloutStep] = Field(
        default_factory=list,
        description="Canary steps; empty uses 10%, analysis, 50%, analysis, 100%.",
        max_length=20,
    )
    analysis: Analysis = nested(Analysis, "Analysis thresholds.")


class Autoscaling(ApiModel):
    """Horizontal autoscaling: a HorizontalPodAutoscaler scales the workload between the bounds."""

    cel_rules = (
        CelRule(
            rule="self.minReplicas <= self.maxReplicas",
            message="minReplicas must not exceed maxReplicas",
            check=lambda a: a.min_replicas <= a.max_replicas,
        ),
    )

    min_replicas: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Fewest replicas (at least 1: an autoscaler does not scale to 0).",
    )
    max_replicas: int = Field(default=1, ge=1, le=1000, description="Most replicas.")
    target_inflight_requests: int | None = Field(
        default=None,
        ge=1,
        le=100000,
        description=(
            "Scale to keep this many queued requests per replica on average (Triton's "
            "nv_inference_pending_request_count, served to the autoscaler by a custom metrics adapter "
            "such as prometheus-adapter). Empty: scale on CPU, 80% of resources.cpu."
        ),
    )


# ModelVersion's reserved-alias rule (spec.registry.aliases), for one alias `{0}`.
_RESERVED = (
    "!{0}.matches('^[lL][aA][tT][eE][sS][tT]$') && !{0}.matches('^[vV][0-9]+$') && !{0}.startsWith('uid-')"
)


class RegistryAliases(ApiModel):
    """Registry aliases that follow what serves, in the registry of the served ModelVersion (its
    spec.registry): `stable` names the version serving 100% once a rollout completes, `canary` the
    version a running canary serves."""

    cel_rules = (
        CelRule(
            rule=f"(!has(self.stable) || ({_RESERVED.format('self.stable')})) && "
            f"(!has(self.canary) || ({_RESERVED.format('self.canary')}))",
            message="aliases latest, v<N> and uid-… are reserved by the registries and the operator",
            check=lambda a: not any(_alias_reserved(x) for x in (a.stable, a.canary) if x is not None),
        ),
        CelRule(
            rule="!has(self.stable) || !has(self.canary) || self.stable != self.canary",
            message="stable and canary must be different aliases (an alias names one version at a time)",
            check=lambda a: a.stable is None or a.stable != a.canary,
        ),
    )

    stable: RegistryAlias | None = Field(
        default=None,
        description=(
            "Alias moved to the registry version of the ModelVersion serving all traffic once its rollout "
            "is complete (e.g. production); it leaves the version it replaces."
        ),
    )
    canary: RegistryAlias | None = Field(
        default=None,
        description=(
            "Alias on the registry version of a running canary (weight above 0, e.g. canary); taken off "
            "that version when the canary is promoted or aborted."
        ),
    )


class ModelVersionFrom(ApiModel):
    """Where the ModelVersion to serve comes from, instead of naming it: Git says "serve what
    pipeline X promotes" and needs no commit per model."""

    pipeline_ref: LocalObjectReference = Field(
        description=(
            "ModelPipeline to follow, in the same namespace: its status.latestPromoted (the ModelVersion "
            "its champion/challenger gate promoted last) is served, and a newer promotion is rolled out "
            "through the canary as a changed modelVersionRef is."
        )
    )


class InferenceDeploymentSpec(ApiModel):
    """Desired state of an InferenceDeployment."""

    cel_rules = (
        CelRule(
            rule="has(self.modelVersionRef) != has(self.modelVersionFrom)",
            message="exactly one of modelVersionRef or modelVersionFrom must be set",
            check=lambda s: (s.model_version_ref is None) != (s.model_version_from is None),
        ),
        CelRule(
            rule=(
                "!has(self.autoscaling) || has(self.autoscaling.targetInflightRequests) || "
                "(has(self.resources) && has(self.resources.cpu))"
            ),
            message=(
                "autoscaling on CPU needs resources.cpu (utilization is measured against the request); "
                "set it, or autoscaling.targetInflightRequests"
            ),
            check=lambda s: (
                s.autoscaling is None
                or s.autoscaling.target_inflight_requests is not None
                or s.resources.cpu is not None
            ),
        ),
    )

    model_version_ref: LocalObjectReference | None = Field(
        default=None,
        description="ModelVersion to serve, in the same namespace (or set modelVersionFrom instead).",
    )
    model_version_from: ModelVersionFrom | None = Field(
        default=None,
        description=(
            "Serve the ModelVersion a ModelPipeline promoted last instead of naming one (exactly one of "
            "modelVersionRef and modelVersionFrom); status.resolvedFrom says what it resolved to."
        ),
    )
    triton: Triton = nested(Triton, "Triton settings.")
    replicas: int = Field(default=1, ge=0, le=1000, description="Serving replicas when not autoscaled.")
    resources: ServingResources = nested(ServingResources, "Resources of each serving pod.")
    rollout: Rollout = nested(Rollout, "Progressive rollout.")
    autoscaling: Autoscaling | None = Field(
        default=None, description="Autoscaling (replicas is then ignored); empty keeps replicas."
    )
    scheduling: PodScheduling = nested(PodScheduling, "Scheduling of the serving pods.")
    service_account_name: ObjectName | None = Field(
        default=None, description="ServiceAccount of the serving pods."
    )
    registry_aliases: RegistryAliases | None = Field(
        default=None,
        description=(
            "Registry aliases that say what serves (in the served ModelVersion's spec.registry); empty "
            "leaves the registry untouched."
        ),
    )


class ServedRepository(ApiModel):
    """Where the rolled-out version's Triton model repository was published."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    model_version: str = Field(description="The ModelVersion it serves.")
    engine_uri: str = Field(description="The engine it references.")
    uri: str = Field(description="Its content-addressed S3 prefix (repository.json inside).")
    triton_version: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Triton's version number of the model in it (the ModelVersion's servingVersion): a "
            "response's model_version and the version label of Triton's metrics."
        ),
    )
    settings_hash: str | None = Field(
        default=None,
        description="Hash of the settings it was built with (triton, resources.gpus, the CPU backend).",
    )


class ResolvedFrom(ApiModel):
    """What spec.modelVersionFrom resolved to when last read."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    pipeline: str = Field(description="The ModelPipeline followed.")
    model_version: str | None = Field(
        default=None, description="The ModelVersion it names as promoted last (none: nothing promoted yet)."
    )
    resolved_time: str | None = Field(
        default=None, description="When the resolved ModelVersion last changed (RFC 3339)."
    )


class ServingRegistry(ApiModel):
    """The registry aliases the operator last applied for what serves, as the registry answered."""

    model_config = ApiModel.model_config | {"extra": "ignore"}

    model_name: str | None = Field(default=None, description="Registered model (or W&B collection).")
    stable_alias: str | None = Field(default=None, description="spec.registryAliases.stable when applied.")
    stable_model_version: str | None = Field(default=None, description="The ModelVersion the alias names.")
    stable_registry_version: str | None = Field(default=None, description="Its version in the registry.")
    canary_alias: str | None = Field(default=None, description="spec.registryAliases.canary when applied.")
    canary_model_version: str | None = Field(
        default=None, description="The ModelVersion the canary alias names (none: on no version)."
    )
    canary_registry_version: str | None = Field(default=None, description="Its version in the registry.")
    checked_time: str | None = Field(
        default=None,
        description="When the registry was last read or written to confirm these aliases (RFC 3339).",
    )


InferenceDeploymentPhase = Literal["Pending", "Progressing", "Paused", "Available", "Degraded", "Failed"]


class InferenceDeploymentStatus(StatusBase):
    """Observed state of an InferenceDeployment."""

    phase: InferenceDeploymentPhase | None = Field(
        default=None, description="Pending, Progressing, Paused, Available, Degraded or Failed."
    )
    model_version: str | None = Field(default=None, description="ModelVersion being served or rolled out.")
    stable_version: str | None = Field(default=None, description="ModelVersion serving the stable traffic.")
    canary_version: str | None = Field(default=None, description="ModelVersion receiving canary traffic.")
    canary_weight: int | None = Field(default=None, description="Share of traffic on the canary, percent.")
    workload_kind: Literal["Rollout", "Deployment"] | None = Field(
        default=None, description="Rollout (Argo Rollouts installed) or Deployment."
    )
    autoscaler: str | None = Field(
        default=None,
        description="The HorizontalPodAutoscaler scaling the workload, while autoscaling is set.",
    )
    replicas: int | None = Field(default=None, description="Pods in all.")
    ready_replicas: int | None = Field(default=None, description="Ready pods.")
    endpoint: str | None = Field(default=None, description="In-cluster URL of Triton's HTTP endpoint.")
    current_step: int | None = Field(default=None, description="The Rollout's current canary step (0-based).")
    repository: ServedRepository | None = Field(
        default=None, description="The Triton model repository published for the version rolled out."
    )
    applied_hash: str | None = Field(
        default=None, description="Hash of the children last applied; unchanged children are not re-sent."
    )
    registry: ServingRegistry | None = Field(
        default=None, description="Where spec.registryAliases point in the registry (what was applied)."
    )
    resolved_from: ResolvedFrom | None = Field(
        default=None,
        description=(
            "With spec.modelVersionFrom: the ModelPipeline followed and the ModelVersion its "
            "status.latestPromoted named when last read (status.modelVersion is what is rolled out)."
        ),
    )
