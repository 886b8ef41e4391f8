"""Pure builders of an InferenceDeployment's workload: Triton serving pods as an Argo Rollouts canary
(Rollout, AnalysisTemplate, the endpoint Service) or, without Argo Rollouts or with strategy
recreate, a Deployment and the endpoint Service (`children` lists them in apply order).

The serving pod: an init container (the trainer image's `fetch-model-repository`) materializes the
content-addressed Triton model repository the operator published in S3 onto an emptyDir, checking
every sha256; tritonserver loads it from there (why not Triton's own S3 repository:
builders/triton.py). Readiness is Triton's `/v2/health/ready`. A new ModelVersion is a new
repository URI, so a new pod template, so a new canary.

The endpoint (`status.endpoint`) is one Service selecting every serving pod of the
InferenceDeployment by its UID label, stable and canary alike: without a traffic router, a canary's
weight is its share of the ready pods (Argo Rollouts' basic canary), and the Service spreads requests
over those pods, so the endpoint's clients really send the canary its share. The Rollout names no
`stableService`/`canaryService` (both optional without `trafficRouting`): Argo Rollouts would pin a
named Service's selector to one pod-template-hash, sending the endpoint's clients 0% to the canary.
The canary analysis needs no Service either: it selects the canary's pods in Prometheus by their
`rollouts-pod-template-hash` label (`canary_labels`).

Who owns which field of the endpoint Service (server-side apply): the operator applies, with its one
field manager, its labels, ownerReferences, the `mlops.dev/desired-hash` annotation, `spec.ports` and
`spec.selector` (an atomic map: applied whole, every key the operator's). Argo Rollouts writes nothing
to it: it writes the `rollouts-pod-template-hash` selector key and its
`argo-rollouts.argoproj.io/managed-by-rollouts` annotation only into Services a Rollout names, and its
service controller removes both from a Service no Rollout names any more (a Service an older operator
version named as `stableService`; the operator's forced apply of the selector removes the key at
once). The apiserver owns its defaults (`clusterIP(s)`, `ipFamilies`, `type`, `sessionAffinity`,
`ports[].protocol`). builders/drift.py compares exactly the operator's fields.

Every child carries `mlops.dev/desired-hash` (builders/drift.py): the handler re-applies a child
that is missing or `drifted`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from mlops_contract import envvars

from ..api.v1alpha1 import API_VERSION, DatasetSpec, InferenceDeploymentSpec
from ..api.v1alpha1.inferencedeployment import RolloutStep
from ..integrations.endpoints import host_pattern, require_allowed
from ..k8s.naming import common_labels, dns_label, label_value, owner_reference, uid_label
from . import analysis_queries
from .drift import stamped
from .pod import GPU_RESOURCE, apply_scheduling, pod_security_context, s3_env
from .triton import GRPC_PORT, HTTP_PORT, METRICS_PORT, tritonserver_args

KIND = "InferenceDeployment"
UID_LABEL = uid_label(KIND)
MODELVERSION_ANNOTATION = "mlops.dev/modelversion"
REPOSITORY_ANNOTATION = "mlops.dev/model-repository"
ROLLOUTS_API = "argoproj.io/v1alpha1"
REPOSITORY_DIR = "/models"
TRITON_UID = 1000  # the triton-server user of NVIDIA's tritonserver images
# 10%, analysis, 50%, analysis, 100% (the issue's and Argo Rollouts users' usual shape).
DEFAULT_STEPS: tuple[Mapping[str, Any], ...] = (
    {"setWeight": 10},
    {"analysis": {"durationSeconds": 300}},
    {"setWeight": 50},
    {"analysis": {"durationSeconds": 300}},
    {"setWeight": 100},
)
DEFAULT_ANALYSIS_SECONDS = 300  # AnalysisStep's default
Workload = Literal["Rollout", "Deployment"]
# The condition reason (and Normal event) of a canary whose analysis steps run unmeasured.
ANALYSIS_DISABLED = "AnalysisDisabled"
PROMETHEUS_ALLOWLIST_SETTING = "MLOPS_PROMETHEUS_ENDPOINT_ALLOWLIST"


@dataclass(frozen=True)
class ServingInputs:
    """Everything the serving workload of one InferenceDeployment depends on."""

    name: str
    namespace: str
    uid: str
    spec: InferenceDeploymentSpec
    model_version: str  # the ModelVersion served (the canary while a rollout runs)
    model_name: str  # Triton's model name (the ModelVersion's modelName)
    repository_uri: str  # content-addressed Triton repository prefix (builders/triton.py)
    dataset: DatasetSpec  # S3 endpoint, region and credentials the init container reads with
    fetch_image: str  # the trainer image: its fetch-model-repository command
    gpu_product: str | None = None  # the engine's GPU product: where the pods must run
    # The Prometheus the canary analysis queries, as `analysis_address` resolved it (the spec's, if
    # allowed, else the operator's); None: no analysis (analysis steps become pauses).
    prometheus_address: str | None = None
    extra_tolerations: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    # The workload exists: with autoscaling, its replicas are the autoscaler's (not applied).
    workload_exists: bool = False

    @property
    def workload_name(self) -> str:
        return dns_label(self.name, "triton")


def service_name(inputs: ServingInputs) -> str:
    return dns_label(inputs.name, "triton", dns1035=True)


def canary_service_name(inputs: ServingInputs) -> str:
    """The canary Service older operator versions made (and named in the Rollout); no longer a child:
    the handler deletes it where it is left (`obsolete_children`)."""
    return dns_label(inputs.name, "triton-canary", dns1035=True)


def analysis_template_name(inputs: ServingInputs) -> str:
    return dns_label(inputs.name, "analysis")


def endpoint(inputs: ServingInputs) -> str:
    """Triton's HTTP endpoint: the Service selecting every serving pod (`build_service`)."""
    return f"http://{service_name(inputs)}.{inputs.namespace}.svc:{HTTP_PORT}"


# -- the Prometheus the analysis queries ------------------------------------------------------------


class PrometheusSettings(Protocol):
    """What `analysis_address` reads of the operator's settings (settings.OperatorConfig)."""

    @property
    def prometheus_address(self) -> str | None: ...

    @property
    def prometheus_endpoint_allowlist(self) -> Sequence[str]: ...


def has_analysis_steps(spec: InferenceDeploymentSpec) -> bool:
    """Whether the canary's steps (the spec's, or the default ones) run an analysis."""
    if spec.rollout.strategy != "canary":
        return False
    if not spec.rollout.steps:
        return any("analysis" in step for step in DEFAULT_STEPS)
    return any(step.analysis is not None for step in spec.rollout.steps)


def analysis_address(spec: InferenceDeploymentSpec, config: PrometheusSettings) -> str | None:
    """The Prometheus address the canary analysis of `spec` may query, or None when there is none
    (or no analysis to run): the analysis is then off (`analysis_disabled`).

    The spec's `rollout.analysis.prometheusAddress` must be on `MLOPS_PROMETHEUS_ENDPOINT_ALLOWLIST`
    (the host and port of the operator's own `MLOPS_PROMETHEUS_ADDRESS` are always allowed): the
    cluster-wide Argo Rollouts controller sends the queries from its own network position, so a
    tenant must not name any URL it likes. Raises `EndpointNotAllowedError` (its message says what to
    change) when it is not. Without a spec address, the operator's own (validated at startup)."""
    if not has_analysis_steps(spec):
        return None
    wanted = spec.rollout.analysis.prometheus_address
    if wanted is None:
        return config.prometheus_address or None
    allowlist = list(config.prometheus_endpoint_allowlist)
    own = host_pattern(config.prometheus_address) if config.prometheus_address else None
    require_allowed(
        wanted, [*allowlist, own] if own else allowlist, setting=PROMETHEUS_ALLOWLIST_SETTING, aws_s3=False
    )
    return str(wanted)


def analysis_disabled(inputs: ServingInputs, kind: Workload) -> str | None:
    """Why this workload's canary runs without analysis (the message of an `AnalysisDisabled`
    condition), or None when it runs the analysis its steps ask for (or has none to run)."""
    if kind != "Rollout" or not has_analysis_steps(inputs.spec) or inputs.prometheus_address:
        return None
    return (
        "no Prometheus to query: the operator has no MLOPS_PROMETHEUS_ADDRESS (the chart's "
        "operator.prometheusAddress) and spec.rollout.analysis.prometheusAddress is unset, so each "
        "analysis step holds the canary for its duration unmeasured and nothing aborts a bad canary; "
        "set one of them to measure"
    )


def _owner(inputs: ServingInputs) -> dict[str, Any]:
    idep = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": inputs.name, "uid": inputs.uid}}
    return owner_reference(idep)


def _labels(inputs: ServingInputs, component: str) -> dict[str, str]:
    labels = common_labels(KIND, inputs.name, component=component)
    labels[UID_LABEL] = inputs.uid
    return labels


def _metadata(inputs: ServingInputs, name: str, component: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": inputs.namespace,
        "labels": _labels(inputs, component),
        "ownerReferences": [_owner(inputs)],
    }


def _selector(inputs: ServingInputs) -> dict[str, str]:
    return {UID_LABEL: inputs.uid}


def _resources(inputs: ServingInputs) -> dict[str, Any]:
    res = inputs.spec.resources
    limits: dict[str, str] = {}
    if res.gpus:
        limits[GPU_RESOURCE] = str(res.gpus)
    if res.cpu:
        limits["cpu"] = res.cpu
    if res.memory:
        limits["memory"] = res.memory
    out: dict[str, Any] = {"limits": limits} if limits else {}
    requests = {k: v for k, v in limits.items() if k != GPU_RESOURCE}
    if requests:
        out["requests"] = requests
    return out


def _hardened(container: dict[str, Any]) -> dict[str, Any]:
    container["securityContext"] = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return container


def _fetch_container(inputs: ServingInputs) -> dict[str, Any]:
    source = inputs.dataset.source
    env = [
        {"name": envvars.REPOSITORY_URI, "value": inputs.repository_uri},
        {"name": envvars.REPOSITORY_DIR, "value": REPOSITORY_DIR},
        {"name": "HOME", "value": "/tmp"},  # noqa: S108 - an emptyDir, not the host's /tmp
        *s3_env(
            endpoint_url=source.endpoint_url, region=source.region, credentials=source.credentials_secret_ref
        ),
    ]
    return _hardened(
        {
            "name": "fetch-model-repository",
            "image": inputs.fetch_image,
            "command": ["mlops-trainer"],
            "args": ["fetch-model-repository"],
            "env": env,
            "volumeMounts": [
                {"name": "models", "mountPath": REPOSITORY_DIR},
                {"name": "scratch", "mountPath": "/tmp"},  # noqa: S108
            ],
        }
    )


def _triton_container(inputs: ServingInputs) -> dict[str, Any]:
    probe = {"httpGet": {"path": "/v2/health/ready", "port": HTTP_PORT}, "periodSeconds": 5}
    return _hardened(
        {
            "name": "triton",
            "image": inputs.spec.triton.image,
            "command": ["tritonserver"],
            "args": tritonserver_args(REPOSITORY_DIR),
            "ports": [
                {"name": "http", "containerPort": HTTP_PORT},
                {"name": "grpc", "containerPort": GRPC_PORT},
                {"name": "metrics", "containerPort": METRICS_PORT},
            ],
            "readinessProbe": probe,
            "livenessProbe": {
                "httpGet": {"path": "/v2/health/live", "port": HTTP_PORT},
                "periodSeconds": 10,
                "failureThreshold": 6,
            },
            "resources": _resources(inputs),
            "volumeMounts": [
                {"name": "models", "mountPath": REPOSITORY_DIR, "readOnly": True},
                {"name": "scratch", "mountPath": "/tmp"},  # noqa: S108
                # The python backend and Triton's shared-memory protocol use /dev/shm.
                {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108
            ],
        }
    )


def pod_template(inputs: ServingInputs) -> dict[str, Any]:
    spec = inputs.spec
    security = pod_security_context() | {
        "runAsUser": TRITON_UID,
        "runAsGroup": TRITON_UID,
        "fsGroup": TRITON_UID,
    }
    pod: dict[str, Any] = {
        "serviceAccountName": spec.service_account_name or "default",
        "automountServiceAccountToken": False,
        "securityContext": security,
        "initContainers": [_fetch_container(inputs)],
        "containers": [_triton_container(inputs)],
        "volumes": [
            {"name": "models", "emptyDir": {"sizeLimit": "20Gi"}},
            {"name": "scratch", "emptyDir": {"sizeLimit": "1Gi"}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
        ],
    }
    apply_scheduling(
        pod,
        spec.scheduling,
        uses_gpus=bool(spec.resources.gpus),
        gpu_product=(spec.resources.gpu_product or inputs.gpu_product) if spec.resources.gpus else None,
        extra_tolerations=inputs.extra_tolerations,
    )
    labels = _labels(inputs, "serving")
    labels[MODELVERSION_ANNOTATION] = label_value(inputs.model_version)
    annotations = {
        MODELVERSION_ANNOTATION: inputs.model_version,
        REPOSITORY_ANNOTATION: inputs.repository_uri,
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
    }
    return {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod}


def _replicas(inputs: ServingInputs) -> dict[str, int]:
    """The workload's `replicas`: the spec's; with autoscaling, the minimum when the workload is
    created and nothing afterwards, so applying a new version never undoes what the autoscaler
    chose (the handler hands the field over first: replicas_handover)."""
    autoscaling = inputs.spec.autoscaling
    if autoscaling is None:
        return {"replicas": inputs.spec.replicas}
    return {} if inputs.workload_exists else {"replicas": autoscaling.min_replicas}


def _api_version(kind: Workload) -> str:
    return ROLLOUTS_API if kind == "Rollout" else "apps/v1"


def replicas_handover(inputs: ServingInputs, kind: Workload, replicas: int) -> dict[str, Any]:
    """The workload's current `replicas` alone, applied by a field manager of its own before the
    workload is applied without the field: server-side apply then keeps the value instead of
    resetting it (Kubernetes' documented hand-over of replicas to an autoscaler)."""
    return {
        "apiVersion": _api_version(kind),
        "kind": kind,
        "metadata": {"name": inputs.workload_name, "namespace": inputs.namespace},
        "spec": {"replicas": replicas},
    }


# Triton's gauge of requests queued for the model, per pod: what a custom metrics adapter serves.
QUEUED_REQUESTS_METRIC = "nv_inference_pending_request_count"
CPU_UTILIZATION_PERCENT = 80


def autoscaler_name(inputs: ServingInputs) -> str:
    return inputs.workload_name


def build_autoscaler(inputs: ServingInputs, kind: Workload) -> dict[str, Any]:
    """A HorizontalPodAutoscaler (autoscaling/v2) of the workload, Rollout or Deployment (both have
    the scale subresource): on Triton's queued requests per pod, or on CPU utilization."""
    autoscaling = inputs.spec.autoscaling
    if autoscaling is None:
        raise ValueError("the spec has no autoscaling")
    if autoscaling.target_inflight_requests is not None:
        metric: dict[str, Any] = {
            "type": "Pods",
            "pods": {
                "metric": {"name": QUEUED_REQUESTS_METRIC},
                "target": {"type": "AverageValue", "averageValue": str(autoscaling.target_inflight_requests)},
            },
        }
    else:
        metric = {
            "type": "Resource",
            "resource": {
                "name": "cpu",
                "target": {"type": "Utilization", "averageUtilization": CPU_UTILIZATION_PERCENT},
            },
        }
    return stamped(
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(inputs, autoscaler_name(inputs), "autoscaler"),
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": _api_version(kind),
                    "kind": kind,
                    "name": inputs.workload_name,
                },
                "minReplicas": autoscaling.min_replicas,
                "maxReplicas": autoscaling.max_replicas,
                "metrics": [metric],
            },
        }
    )


def build_service(inputs: ServingInputs, *, canary: bool = False) -> dict[str, Any]:
    """The endpoint Service: every serving pod of the InferenceDeployment, stable and canary (no
    Rollout names it, so no controller narrows its selector). `canary=True` builds the Service older
    versions named as the Rollout's canaryService, for a caller that still applies it; it is not one
    of `children` (and would select every pod too)."""
    name = canary_service_name(inputs) if canary else service_name(inputs)
    return stamped(
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _metadata(inputs, name, "canary-service" if canary else "service"),
            "spec": {
                "selector": _selector(inputs),
                "ports": [
                    {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                    {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc"},
                    {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics"},
                ],
            },
        }
    )


def _steps(inputs: ServingInputs) -> list[dict[str, Any]]:
    given = inputs.spec.rollout.steps or [RolloutStep.model_validate(step) for step in DEFAULT_STEPS]
    steps: list[dict[str, Any]] = []
    for step in given:
        if step.set_weight is not None:
            steps.append({"setWeight": step.set_weight})
        elif step.pause is not None:
            duration = step.pause.duration_seconds
            steps.append({"pause": {"duration": f"{duration}s"} if duration is not None else {}})
        else:
            seconds = step.analysis.duration_seconds if step.analysis else DEFAULT_ANALYSIS_SECONDS
            if not inputs.prometheus_address:
                # No Prometheus (analysis_disabled): the canary holds as long, unmeasured.
                steps.append({"pause": {"duration": f"{seconds}s"}})
                continue
            steps.append(
                {
                    "analysis": {
                        "templates": [{"templateName": analysis_template_name(inputs)}],
                        "args": [
                            {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
                            {"name": "count", "value": str(measurements(inputs, seconds))},
                        ],
                    }
                }
            )
    return steps


def measurements(inputs: ServingInputs, seconds: int) -> int:
    """How many measurements an analysis step of `seconds` makes at the spec's interval. With the
    default initial delay (one interval) the last one is taken `seconds` after the step starts."""
    return max(1, math.ceil(seconds / inputs.spec.rollout.analysis.interval_seconds))


def initial_delay_seconds(inputs: ServingInputs) -> int:
    """Seconds an analysis waits before its first measurement: the spec's, or one interval (the
    canary's pods, ready when the step starts, have then been scraped and have served)."""
    analysis = inputs.spec.rollout.analysis
    delay = analysis.initial_delay_seconds
    return analysis.interval_seconds if delay is None else delay


def build_rollout(inputs: ServingInputs) -> dict[str, Any]:
    """A basic canary: no traffic router and no stableService/canaryService, so the weight is the
    canary's share of the pods and the endpoint Service reaches them all (module docstring)."""
    return stamped(
        {
            "apiVersion": ROLLOUTS_API,
            "kind": "Rollout",
            "metadata": _metadata(inputs, inputs.workload_name, "rollout"),
            "spec": {
                **_replicas(inputs),
                "selector": {"matchLabels": _selector(inputs)},
                "template": pod_template(inputs),
                "revisionHistoryLimit": 3,
                "progressDeadlineSeconds": 900,
                "strategy": {"canary": {"steps": _steps(inputs)}},
            },
        }
    )


def canary_labels(inputs: ServingInputs, pod_template_hash: str) -> dict[str, str]:
    """Prometheus target labels of one pod template's serving pods: `namespace`,
    `inferencedeployment` and `rollouts_pod_template_hash`, copied from the pods' namespace and their
    labels `mlops.dev/inferencedeployment` and `rollouts-pod-template-hash` (by the local control
    plane's file discovery; in a cluster by the chart's serving PodMonitor)."""
    return {
        "namespace": inputs.namespace,
        "inferencedeployment": label_value(inputs.name),
        "rollouts_pod_template_hash": pod_template_hash,
    }


def build_analysis_template(inputs: ServingInputs) -> dict[str, Any]:
    """Success rate and p95 latency of the canary's pods, from Triton's metrics, queried at
    `inputs.prometheus_address` (`analysis_address`; without one there is no template: ValueError).

    Three outcomes per measurement, kept apart: a breach (Failed; more than failureLimit abort the
    canary), no requests in the window (NaN: Inconclusive, which pauses the rollout for a person
    instead of promoting a canary nobody has called; inconclusiveLimit tolerates some), and no
    measurement at all (Prometheus unreachable, or no series: Error; more than consecutiveErrorLimit
    in a row end the analysis in Error, "metrics unavailable", not "metrics breached"). The first
    measurement waits `initialDelay`, so the canary's pods have been scraped and have served: no
    error is spent before anything can be measured."""
    if not inputs.prometheus_address:
        raise ValueError("no Prometheus address: the canary runs without analysis (analysis_disabled)")
    analysis = inputs.spec.rollout.analysis
    labels = canary_labels(inputs, "{{args.canary-hash}}")
    window = f"{max(analysis.interval_seconds * 2, 30)}s"
    address = inputs.prometheus_address

    def metric(name: str, query: str, good: str, bad: str) -> dict[str, Any]:
        return {
            "name": name,
            "initialDelay": f"{initial_delay_seconds(inputs)}s",
            "interval": f"{analysis.interval_seconds}s",
            "count": "{{args.count}}",
            "failureLimit": analysis.failure_limit,
            "inconclusiveLimit": analysis.inconclusive_limit,
            "consecutiveErrorLimit": analysis.consecutive_error_limit,
            "successCondition": good,
            "failureCondition": bad,
            "provider": {"prometheus": {"address": address, "query": query}},
        }

    minimum = analysis.success_rate_min
    metrics = [
        metric(
            "success-rate",
            analysis_queries.success_rate(inputs.model_name, labels, window),
            f"result[0] >= {minimum}",
            f"result[0] < {minimum}",
        )
    ]
    if analysis.latency_p95_max_ms is not None:
        limit = analysis.latency_p95_max_ms
        metrics.append(
            metric(
                "latency-p95-ms",
                analysis_queries.latency_p95_ms(inputs.model_name, labels),
                f"result[0] <= {limit}",
                f"result[0] > {limit}",
            )
        )
    return stamped(
        {
            "apiVersion": ROLLOUTS_API,
            "kind": "AnalysisTemplate",
            "metadata": _metadata(inputs, analysis_template_name(inputs), "analysis"),
            "spec": {"args": [{"name": "canary-hash"}, {"name": "count", "value": "1"}], "metrics": metrics},
        }
    )


def build_deployment(inputs: ServingInputs) -> dict[str, Any]:
    recreate = inputs.spec.rollout.strategy == "recreate"
    return stamped(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": _metadata(inputs, inputs.workload_name, "deployment"),
            "spec": {
                **_replicas(inputs),
                "selector": {"matchLabels": _selector(inputs)},
                "template": pod_template(inputs),
                "revisionHistoryLimit": 3,
                "progressDeadlineSeconds": 900,
                "strategy": {"type": "Recreate"} if recreate else {"type": "RollingUpdate"},
            },
        }
    )


def children(inputs: ServingInputs, kind: Workload) -> list[dict[str, Any]]:
    """Every child of the InferenceDeployment, in apply order: the endpoint Service; with a Rollout,
    the AnalysisTemplate (only when the analysis has a Prometheus to query: `analysis_disabled`)
    before the Rollout that references it; the workload; its autoscaler after it."""
    built = [build_service(inputs)]
    if kind == "Rollout":
        if has_analysis_steps(inputs.spec) and inputs.prometheus_address:
            built.append(build_analysis_template(inputs))
        built.append(build_rollout(inputs))
    else:
        built.append(build_deployment(inputs))
    if inputs.spec.autoscaling is not None:
        built.append(build_autoscaler(inputs, kind))
    return built


def obsolete_children(inputs: ServingInputs, kind: Workload) -> list[tuple[str, str]]:
    """(kind, name) of children this InferenceDeployment may still have from an older operator
    version or another workload kind, which `children` no longer builds: delete them where found.
    The canary Service (the Rollout names no Service now); the AnalysisTemplate where no analysis
    runs (no Prometheus, no analysis step, or a Deployment)."""
    stale = [("Service", canary_service_name(inputs))]
    if not (kind == "Rollout" and has_analysis_steps(inputs.spec) and inputs.prometheus_address):
        stale.append(("AnalysisTemplate", analysis_template_name(inputs)))
    return stale


def weight_of_step(inputs: ServingInputs, step_index: int | None) -> int:
    """The canary weight the Rollout's steps have set before `step_index` (a replica-count canary)."""
    steps = _steps(inputs)
    if step_index is None or step_index >= len(steps):
        return 100
    weights = [s["setWeight"] for s in steps[:step_index] if "setWeight" in s]
    return weights[-1] if weights else 0
