"""Pure builders of a ModelVersion's workload: the compile Job and the evaluate Job, and the gates.

The Jobs run the trainer image's `compile` and `evaluate` commands (trainer-image/README.md) with
the same pod hardening, result contract (`mlops_contract.result`) and failure classification
(`observation.training`) as training Jobs. Names are deterministic (ModelVersion, stage, attempt),
so a restarted operator finds the Job it made instead of making a second one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from mlops_contract import envvars
from mlops_contract.result import TERMINATION_MESSAGE_PATH

from ..api.v1alpha1 import API_VERSION, DatasetSpec, ModelVersionSpec
from ..api.v1alpha1.modelversion import AcceptanceGates
from ..k8s.naming import common_labels, dns_label, owner_reference, uid_label
from .pod import (
    GPU_RESOURCE,
    apply_scheduling,
    hardened_container,
    hardened_pod_spec,
    kueue_labels,
    s3_env,
)

KIND = "ModelVersion"
CONTAINER = "trainer"
UID_LABEL = uid_label(KIND)
STAGE_LABEL = "mlops.dev/stage"
Stage = Literal["compile", "evaluate"]
# The spec section of each stage (its deadlineSeconds).
STAGE_SECTIONS: dict[Stage, str] = {"compile": "compile", "evaluate": "evaluation"}
# Neither stage loads data through DataLoader workers: a small /dev/shm is enough.
SHM_SIZE_LIMIT = "256Mi"
# The compile/evaluate stages never change what they produce between attempts; a retried attempt is
# a new Job (deterministic name) once the previous one is gone.
METRIC_LATENCY_P95 = "latency_p95_ms"
METRIC_SIZE_MB = "size_mb"
GATE_LATENCY = "maxLatencyP95Ms"
GATE_SIZE = "maxSizeMB"


def job_name(modelversion: str, stage: Stage, attempt: int) -> str:
    return dns_label(modelversion, f"{stage}-a{attempt}")


def compile_hash(spec: ModelVersionSpec) -> str:
    """Hash of what the compiled and evaluated artifact depends on: everything but the stage, the
    registry's aliases, credentials and deletion policy (promotion), where the Jobs run and how long
    they may run."""
    wire = spec.wire()
    for name in ("stage", "scheduling", "serviceAccountName"):
        wire.pop(name, None)
    for section in STAGE_SECTIONS.values():
        wire[section] = {k: v for k, v in wire[section].items() if k != "deadlineSeconds"}
    registry = dict(wire.get("registry") or {})
    for name in ("aliases", "credentialsSecretRef", "deletionPolicy"):
        registry.pop(name, None)
    wire["registry"] = registry
    return hashlib.sha256(json.dumps(wire, sort_keys=True).encode()).hexdigest()[:16]


def default_engine_uri(model_uri: str, modelversion: str, uid: str) -> str:
    """Where compile writes when the spec does not say: next to the trained model, one prefix per
    ModelVersion object (its UID), so a deleted and re-created ModelVersion never mixes artifacts."""
    return f"{model_uri.rstrip('/')}/compiled/{modelversion}-{uid[:8]}/"


@dataclass(frozen=True)
class StageInputs:
    """Everything the Job of one stage (and attempt) of a ModelVersion depends on."""

    name: str
    namespace: str
    uid: str
    spec: ModelVersionSpec
    stage: Stage
    attempt: int
    image: str
    model_uri: str  # the trained model: model.onnx + metadata.json
    engine_uri: str  # the compile output, the evaluate input
    dataset: DatasetSpec  # S3 endpoint, region and credentials; its prefix holds the evaluation split
    calibration_uri: str | None = None  # int8 calibration data (a Dataset's prefix)
    gpu_product: str | None = None  # where the GPU stage must run (the engine's product, for evaluate)
    extra_tolerations: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    scratch_size_limit: str = "20Gi"
    deadline_seconds: int | None = None  # the Job's activeDeadlineSeconds

    @property
    def job_name(self) -> str:
        return job_name(self.name, self.stage, self.attempt)

    @property
    def gpus(self) -> int:
        return 1 if self.spec.compile.target == "tensorrt" else 0


def _labels(inputs: StageInputs) -> dict[str, str]:
    labels = common_labels(KIND, inputs.name, component=inputs.stage)
    labels[UID_LABEL] = inputs.uid
    labels[STAGE_LABEL] = inputs.stage
    labels["mlops.dev/attempt"] = str(inputs.attempt)
    labels.update(kueue_labels(inputs.spec.scheduling))
    return labels


def _stage_env(inputs: StageInputs) -> list[dict[str, Any]]:
    spec = inputs.spec
    compile_ = spec.compile
    if inputs.stage == "compile":
        env = [
            {"name": envvars.MODEL_URI, "value": inputs.model_uri},
            {"name": envvars.OUTPUT_URI, "value": inputs.engine_uri},
            {"name": envvars.COMPILE_TARGET, "value": compile_.target},
            {"name": envvars.PRECISION, "value": compile_.precision},
            {"name": envvars.MAX_BATCH_SIZE, "value": str(compile_.max_batch_size)},
            {"name": envvars.WORKSPACE_MIB, "value": str(compile_.workspace_mib)},
        ]
        if compile_.dynamic_shapes:
            shapes = [s.wire() for s in compile_.dynamic_shapes]
            env.append({"name": envvars.DYNAMIC_SHAPES, "value": json.dumps(shapes, sort_keys=True)})
        if compile_.calibration and inputs.calibration_uri:
            env += [
                {"name": envvars.CALIBRATION_DATASET_URI, "value": inputs.calibration_uri},
                {"name": envvars.CALIBRATION_MAX_SAMPLES, "value": str(compile_.calibration.max_samples)},
            ]
        return env
    evaluation = spec.evaluation
    return [
        {"name": envvars.ENGINE_URI, "value": inputs.engine_uri},
        {"name": envvars.DATASET_URI, "value": inputs.dataset.source.uri},
        {"name": envvars.EVAL_SPLIT, "value": evaluation.split},
        {"name": envvars.EVAL_BATCH_SIZE, "value": str(evaluation.batch_size or compile_.max_batch_size)},
        {"name": envvars.EVAL_WARMUP_BATCHES, "value": str(evaluation.warmup_batches)},
        {"name": envvars.EVAL_LATENCY_BATCHES, "value": str(evaluation.latency_batches)},
    ]


def _env(inputs: StageInputs) -> list[dict[str, Any]]:
    source = inputs.dataset.source
    return [
        *_stage_env(inputs),
        {"name": envvars.TERMINATION_MESSAGE_PATH, "value": TERMINATION_MESSAGE_PATH},
        # The root filesystem is read-only; libraries that write under $HOME get the scratch volume.
        {"name": "HOME", "value": "/tmp"},  # noqa: S108 - an emptyDir, not the host's /tmp
        *s3_env(
            endpoint_url=source.endpoint_url, region=source.region, credentials=source.credentials_secret_ref
        ),
    ]


def build_stage_job(inputs: StageInputs) -> dict[str, Any]:
    spec = inputs.spec
    labels = _labels(inputs)
    resources = {"limits": {GPU_RESOURCE: str(inputs.gpus)}} if inputs.gpus else {}
    container = hardened_container(
        name=CONTAINER,
        image=spec.compile.image or inputs.image,
        command=["mlops-trainer"],
        args=[inputs.stage],
        env=_env(inputs),
        resources=resources,
    )
    pod_spec = hardened_pod_spec(
        service_account_name=spec.service_account_name,
        containers=[container],
        scratch_size_limit=inputs.scratch_size_limit,
        shm_size_limit=SHM_SIZE_LIMIT,
    )
    # An engine is built for, and only runs on, one GPU model: both stages run on that product.
    apply_scheduling(
        pod_spec,
        spec.scheduling,
        uses_gpus=bool(inputs.gpus),
        gpu_product=inputs.gpu_product if inputs.gpus else None,
        extra_tolerations=inputs.extra_tolerations,
    )
    owner = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": inputs.name, "uid": inputs.uid}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": inputs.job_name,
            "namespace": inputs.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            # Attempts are the operator's: it classifies the failure and retries with backoff.
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            # A hung build must not hold a GPU forever: the Job controller stops it past its deadline.
            **({"activeDeadlineSeconds": inputs.deadline_seconds} if inputs.deadline_seconds else {}),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


# -- the gates ---------------------------------------------------------------------------------------

_OPS = {
    ">=": lambda a, b: a >= b,
    ">": lambda a, b: a > b,
    "<=": lambda a, b: a <= b,
    "<": lambda a, b: a < b,
}


@dataclass(frozen=True)
class GateOutcome:
    name: str
    passed: bool
    observed: float | None
    threshold: float
    message: str
    missing: bool = False

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "passed": self.passed, "threshold": self.threshold}
        if self.observed is not None:
            out["observed"] = self.observed
        out["message"] = self.message
        return out


def _gate(name: str, metric: str, op: str, threshold: float, metrics: Mapping[str, float]) -> GateOutcome:
    observed = metrics.get(metric)
    if observed is None or not math.isfinite(observed):
        return GateOutcome(
            name,
            False,
            None,
            threshold,
            f"MetricMissing: the evaluator reported no {metric}; a gate never passes without its metric",
            missing=True,
        )
    passed = bool(_OPS[op](observed, threshold))
    verdict = "passed" if passed else "failed"
    return GateOutcome(
        name, passed, observed, threshold, f"{metric} {observed:g} {op} {threshold:g}: {verdict}"
    )


def check_gates(gates: AcceptanceGates, metrics: Mapping[str, float]) -> list[GateOutcome]:
    """One outcome per gate, in spec order; a gate on a metric the evaluator did not report fails."""
    outcomes = [_gate(g.name, g.name, g.op, g.threshold, metrics) for g in gates.metrics]
    if gates.max_latency_p95_ms is not None:
        outcomes.append(_gate(GATE_LATENCY, METRIC_LATENCY_P95, "<=", gates.max_latency_p95_ms, metrics))
    if gates.max_size_mb is not None:
        outcomes.append(_gate(GATE_SIZE, METRIC_SIZE_MB, "<=", gates.max_size_mb, metrics))
    return outcomes
