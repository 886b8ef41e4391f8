"""How an InferenceDeployment reads its aborted Rollout, as data (no clients: a call would raise)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mlops_operator.api.v1alpha1 import InferenceDeploymentSpec
from mlops_operator.builders.serving import MODELVERSION_ANNOTATION
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import inferencedeployment
from mlops_operator.handlers.context import ReconcileContext

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v2"}})
ABORTED = {
    "metadata": {"name": "digits", "uid": "rollout-uid", "generation": 3},
    "spec": {"template": {"metadata": {"annotations": {MODELVERSION_ANNOTATION: "v2"}}}},
    "status": {"abort": True, "currentPodHash": "abc", "observedGeneration": "3", "replicas": 2},
}


def _ctx(phase: str, canary: str, reason: str, message: str) -> ReconcileContext:
    status: dict[str, Any] = {
        "phase": phase,
        "stableVersion": "v1",
        "canaryVersion": canary,
        "conditions": [{"type": "Ready", "status": "False", "reason": reason, "message": message}],
    }
    body = {
        "metadata": {"name": "digits", "namespace": "ns", "uid": "idep-uid", "generation": 1},
        "status": status,
    }
    return ReconcileContext(body, None, now=lambda: NOW)


def test_a_degraded_deployment_does_not_read_its_analysis_runs_again():
    said = "the canary of v2 was aborted, v1 keeps 100%: latency-p95-ms = 412.0 (Failed, 2 failed)"
    ctx = _ctx("Degraded", "v2", "AnalysisFailed", said)
    outcome = inferencedeployment._observe(SPEC, ctx, "Rollout", ABORTED, inputs=None, waiting=None)
    assert outcome.phase == "Degraded"
    ready = outcome.conditions[0]
    assert (ready.reason, ready.message) == ("AnalysisFailed", said)


@pytest.mark.parametrize(
    ("phase", "canary", "message"),
    [
        ("Progressing", "v2", "canary v2 at 10% (step 1), v1 stable"),  # the abort is new
        ("Degraded", "v1b", "the canary of v1b was aborted, ..."),  # another version's abort
        ("Degraded", "v2", f"the analysis failed ({inferencedeployment.UNREADABLE_ANALYSIS})"),
    ],
)
def test_a_new_abort_or_an_unread_one_reads_the_analysis_runs(phase, canary, message):
    ctx = _ctx(phase, canary, "AnalysisFailed", message)
    with pytest.raises(RuntimeError, match="needs API clients"):
        inferencedeployment._observe(SPEC, ctx, "Rollout", ABORTED, inputs=None, waiting=None)


def _starting_rollout(template_version: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits", "uid": "rollout-uid", "generation": 2},
        "spec": {"template": {"metadata": {"annotations": {MODELVERSION_ANNOTATION: template_version}}}},
        "status": {"currentPodHash": "new", "observedGeneration": "2", "replicas": 2, "readyReplicas": 0},
    }


def _stuck_pod() -> dict[str, Any]:
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "triton:typo"'}
    return {
        "kind": "Pod",
        "metadata": {
            "name": "digits-new-1",
            "namespace": "ns",
            "uid": "pod-uid",
            "labels": {"mlops.dev/inferencedeployment-uid": "idep-uid", "rollouts-pod-template-hash": "new"},
        },
        "status": {
            "phase": "Pending",
            "containerStatuses": [{"name": "triton", "state": {"waiting": waiting}}],
        },
    }


def _with_pods(ctx: ReconcileContext) -> ReconcileContext:
    cache = Cache()
    cache.upsert("Pod", _stuck_pod())
    return ReconcileContext(ctx.body, None, now=lambda: NOW, cache=cache)


def test_a_first_version_whose_pods_cannot_start_says_why_in_ready():
    ctx = _with_pods(_ctx("Progressing", "", "Starting", ""))
    ctx.body["status"].pop("stableVersion")
    outcome = inferencedeployment._observe(
        SPEC, ctx, "Rollout", _starting_rollout("v2"), inputs=None, waiting=None
    )
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("False", "ImagePullBackOff")
    assert "triton:typo" in ready.message
    assert "digits-new-1" in ready.message


def test_a_canary_whose_pods_cannot_start_waits_with_one_warning_while_the_stable_serves():
    ctx = _with_pods(_ctx("Progressing", "v2", "CanaryProgressing", "canary v2 at 10%"))
    outcome = inferencedeployment._observe(
        SPEC, ctx, "Rollout", _starting_rollout("v2"), inputs=None, waiting=None
    )
    ready, waiting = outcome.conditions
    assert (ready.status, ready.reason) == ("True", "CanaryProgressing")  # v1 still serves
    assert (waiting.type, waiting.status, waiting.reason) == ("CanaryWaiting", "True", "ImagePullBackOff")
    assert [(e.reason, e.type) for e in outcome.events] == [("ImagePullBackOff", "Warning")]
    # Said once: the next reconcile with the same problem posts no second event.
    conditions = ctx.body["status"]["conditions"]
    conditions.append(
        {"type": "CanaryWaiting", "status": "True", "reason": "ImagePullBackOff", "message": ""}
    )
    again = inferencedeployment._observe(
        SPEC, ctx, "Rollout", _starting_rollout("v2"), inputs=None, waiting=None
    )
    assert again.events == ()


def test_the_published_repository_is_reused_only_for_the_same_engine_and_settings():
    dataset = {"source": {"uri": "s3://data/digits/", "credentialsSecretRef": {"name": "s3"}}}
    mv = {
        "metadata": {"name": "v2"},
        "spec": {"modelName": "digits"},
        "status": {
            "engine": {"uri": "s3://b/engines/v2/model.onnx", "metadataURI": "s3://b/engines/v2/m.json"},
            "pinned": {"datasetSpec": dataset},
        },
    }
    ctx = _ctx("Available", "", "Available", "")
    known = {"modelVersion": "v2", "engineURI": "s3://b/engines/v2/model.onnx", "uri": "s3://b/triton/abc/"}
    settings_hash = inferencedeployment._hash_of(
        {
            "triton": SPEC.triton.wire(),
            "gpus": SPEC.resources.gpus,
            "cpuBackend": ctx.config.triton_cpu_backend,
        }
    )
    ctx.body["status"]["repository"] = known | {"settingsHash": settings_hash}
    assert inferencedeployment._published(SPEC, ctx, mv)["uri"] == "s3://b/triton/abc/"  # no request
    # Other Triton settings (or an older operator's status, without the hash): built and published
    # again, which needs the tenant's S3 (here: no clients, so the attempt shows as this error).
    bigger = InferenceDeploymentSpec.model_validate(
        {"modelVersionRef": {"name": "v2"}, "triton": {"maxBatchSize": 64}}
    )
    with pytest.raises(RuntimeError, match="needs API clients"):
        inferencedeployment._published(bigger, ctx, mv)
    ctx.body["status"]["repository"] = known
    with pytest.raises(RuntimeError, match="needs API clients"):
        inferencedeployment._published(SPEC, ctx, mv)
