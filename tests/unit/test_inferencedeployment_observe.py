"""An InferenceDeployment's status read from its workload, pods and ModelVersions, as data (no
clients: a call would raise): Ready only with the required ready replicas, the real canary weight,
why a canary was aborted, a version pulled away, a Deployment standing in for a Rollout (issue 15)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mlops_operator.api.v1alpha1 import InferenceDeploymentSpec
from mlops_operator.builders.serving import MODELVERSION_ANNOTATION
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import inferencedeployment
from mlops_operator.handlers.base import Outcome, status_patch
from mlops_operator.handlers.context import Clients, ReconcileContext
from mlops_operator.handlers.inferencedeployment.status import Situation
from mlops_operator.k8s.conditions import ConditionUpdate
from mlops_operator.observation.serving import analysis_verdict, minimum_available, real_canary_weight

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v2"}})
SPEC2 = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v2"}, "replicas": 2})
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
    outcome = inferencedeployment.observe(SPEC, ctx, "Rollout", ABORTED, Situation())
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
        inferencedeployment.observe(SPEC, ctx, "Rollout", ABORTED, Situation())


def _starting_rollout(template_version: str, ready: int = 0) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits", "uid": "rollout-uid", "generation": 2},
        "spec": {"template": {"metadata": {"annotations": {MODELVERSION_ANNOTATION: template_version}}}},
        "status": {
            "currentPodHash": "new",
            "stableRS": "old",
            "observedGeneration": "2",
            "replicas": 2 + ready,
            "readyReplicas": ready,
        },
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
    outcome = inferencedeployment.observe(SPEC, ctx, "Rollout", _starting_rollout("v2"), Situation())
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("False", "ImagePullBackOff")
    assert "triton:typo" in ready.message
    assert "digits-new-1" in ready.message


def test_a_canary_whose_pods_cannot_start_waits_with_one_warning_while_the_stable_serves():
    ctx = _with_pods(_ctx("Progressing", "v2", "CanaryProgressing", "canary v2 at 10%"))
    outcome = inferencedeployment.observe(SPEC, ctx, "Rollout", _starting_rollout("v2", ready=2), Situation())
    ready, waiting = outcome.conditions
    assert (ready.status, ready.reason) == ("True", "CanaryProgressing")  # v1 still serves
    assert (waiting.type, waiting.status, waiting.reason) == ("CanaryWaiting", "True", "ImagePullBackOff")
    assert [(e.reason, e.type) for e in outcome.events] == [("ImagePullBackOff", "Warning")]
    # Said once: the next reconcile with the same problem posts no second event.
    conditions = ctx.body["status"]["conditions"]
    conditions.append(
        {"type": "CanaryWaiting", "status": "True", "reason": "ImagePullBackOff", "message": ""}
    )
    again = inferencedeployment.observe(SPEC, ctx, "Rollout", _starting_rollout("v2", ready=2), Situation())
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
    settings_hash = inferencedeployment.hash_of(
        {
            "triton": SPEC.triton.wire(),
            "gpus": SPEC.resources.gpus,
            "cpuBackend": ctx.config.triton_cpu_backend,
        }
    )
    ctx.body["status"]["repository"] = known | {"settingsHash": settings_hash}
    assert inferencedeployment.published(SPEC, ctx, mv)["uri"] == "s3://b/triton/abc/"  # no request
    # Other Triton settings (or an older operator's status, without the hash): built and published
    # again, which needs the tenant's S3 (here: no clients, so the attempt shows as this error).
    bigger = InferenceDeploymentSpec.model_validate(
        {"modelVersionRef": {"name": "v2"}, "triton": {"maxBatchSize": 64}}
    )
    with pytest.raises(RuntimeError, match="needs API clients"):
        inferencedeployment.published(bigger, ctx, mv)
    ctx.body["status"]["repository"] = known
    with pytest.raises(RuntimeError, match="needs API clients"):
        inferencedeployment.published(SPEC, ctx, mv)


# -- issue 15: nothing claimed that was not observed -------------------------------------------------------


def _pod(name: str, revision: str, *, ready: bool) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"uid-{name}",
            "labels": {
                "mlops.dev/inferencedeployment-uid": "idep-uid",
                "rollouts-pod-template-hash": revision,
            },
        },
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def _ctx_with(status: dict[str, Any], *objects: tuple[str, dict[str, Any]]) -> ReconcileContext:
    body = {
        "kind": "InferenceDeployment",
        "metadata": {
            "name": "digits",
            "namespace": "ns",
            "uid": "idep-uid",
            "generation": 4,
            "resourceVersion": "1",
        },
        "status": status,
    }
    cache = Cache()
    cache.upsert("InferenceDeployment", body)
    for kind, obj in objects:
        cache.upsert(kind, obj)
    return ReconcileContext(body, None, now=lambda: NOW, cache=cache)


def _deployment(version: str, *, ready: int, recreate: bool = True, generation: int = 3) -> dict[str, Any]:
    return {
        "kind": "Deployment",
        "metadata": {"name": "digits-triton", "namespace": "ns", "generation": generation},
        "spec": {
            "replicas": 2,
            "strategy": {"type": "Recreate"} if recreate else {"type": "RollingUpdate"},
            "template": {"metadata": {"annotations": {MODELVERSION_ANNOTATION: version}}},
        },
        "status": {
            "observedGeneration": generation,
            "replicas": 2,
            "readyReplicas": ready,
            "availableReplicas": ready,
            "updatedReplicas": 2,
        },
    }


def test_a_recreate_whose_new_pods_cannot_pull_their_image_is_not_ready():
    # v1 served; the Recreate Deployment now runs v2, whose pods pull no image: 0 ready, a full outage.
    pod = _stuck_pod() | {}
    pod["metadata"] = {**pod["metadata"], "labels": {"mlops.dev/inferencedeployment-uid": "idep-uid"}}
    ctx = _ctx_with({"phase": "Available", "stableVersion": "v1", "modelVersion": "v1"}, ("Pod", pod))
    outcome = inferencedeployment.observe(SPEC2, ctx, "Deployment", _deployment("v2", ready=0), Situation())
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("False", "ImagePullBackOff")
    assert "0/2 replicas ready, 2 required" in ready.message
    assert "rolling out v2 in place of v1" in ready.message
    assert outcome.fields["canaryVersion"] is None


def test_ready_says_which_version_serves_on_how_many_replicas():
    ctx = _ctx_with({"phase": "Progressing", "stableVersion": "v1"})
    spec = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v1"}, "replicas": 2})
    outcome = inferencedeployment.observe(spec, ctx, "Deployment", _deployment("v1", ready=2), Situation())
    assert outcome.phase == "Available"
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("True", "Available")
    assert "v1 serves on 2 ready replica(s)" in ready.message
    # One of two ready (a rolling Deployment of 2 may lose none): not Ready, whatever the phase was.
    half = _deployment("v1", ready=1, recreate=False)
    half["status"]["updatedReplicas"] = 2
    outcome = inferencedeployment.observe(spec, ctx, "Deployment", half, Situation())
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("False", "InsufficientReplicas")
    assert "1/2 replicas ready, 2 required" in ready.message


def _rollout(version: str, *, generation: int, observed: int, **status: Any) -> dict[str, Any]:
    return {
        "kind": "Rollout",
        "metadata": {
            "name": "digits-triton",
            "namespace": "ns",
            "uid": "rollout-uid",
            "generation": generation,
        },
        "spec": {
            "replicas": 2,
            "template": {"metadata": {"annotations": {MODELVERSION_ANNOTATION: version}}},
        },
        "status": {"observedGeneration": str(observed), "replicas": 3, "readyReplicas": 3} | status,
    }


def test_the_canary_weight_is_the_real_share_of_ready_pods_and_never_read_from_an_unobserved_status():
    pods = [_pod("s1", "old", ready=True), _pod("s2", "old", ready=True), _pod("c1", "new", ready=True)]
    ctx = _ctx_with({"phase": "Available", "stableVersion": "v1"}, *(("Pod", p) for p in pods))
    rollout = _rollout(
        "v2", generation=5, observed=5, currentPodHash="new", stableRS="old", currentStepIndex=1
    )
    outcome = inferencedeployment.observe(SPEC, ctx, "Rollout", rollout, Situation())
    assert (outcome.fields["canaryVersion"], outcome.fields["canaryWeight"]) == ("v2", 33)  # 1 of 3 pods
    assert outcome.conditions[0].status == "True"
    # The Rollout has not observed generation 6 (its status still describes v1, all stable): no
    # weight, no step read from it.
    stale = _rollout("v2", generation=6, observed=5, currentPodHash="old", stableRS="old", currentStepIndex=5)
    outcome = inferencedeployment.observe(SPEC, ctx, "Rollout", stale, Situation())
    assert (outcome.fields["canaryWeight"], outcome.fields["currentStep"]) == (0, None)


def test_a_traffic_routers_weight_is_reported_as_it_is():
    rollout = _rollout(
        "v2", generation=2, observed=2, currentPodHash="new", stableRS="old",
        canary={"weights": {"canary": {"weight": 10}, "stable": {"weight": 90}}},
    )  # fmt: skip
    assert real_canary_weight(rollout, []) == 10


def test_a_rollout_argo_refuses_is_not_ready():
    rollout = _rollout("v2", generation=2, observed=2)
    rollout["status"]["conditions"] = [
        {"type": "InvalidSpec", "status": "True", "message": "The Rollout has an invalid step"}
    ]
    ctx = _ctx_with({"phase": "Available", "stableVersion": "v1"})
    outcome = inferencedeployment.observe(SPEC, ctx, "Rollout", rollout, Situation())
    ready = outcome.conditions[0]
    assert (outcome.phase, ready.status, ready.reason) == ("Degraded", "False", "RolloutInvalidSpec")
    assert "invalid step" in ready.message


def test_a_canary_aborted_because_its_version_went_away_keeps_the_stable_ready():
    aborted = _rollout("v2", generation=2, observed=2, abort=True, currentPodHash="new", stableRS="old")
    aborted["status"]["readyReplicas"] = 2
    ctx = _ctx_with({"phase": "Progressing", "stableVersion": "v1", "canaryVersion": "v2"})
    gone = ("ModelVersionNotFound", "ModelVersion v2 does not exist")
    outcome = inferencedeployment.observe(
        SPEC, ctx, "Rollout", aborted, Situation(waiting=gone, withdrawn=gone)
    )
    ready, waiting = outcome.conditions
    assert (ready.status, ready.reason) == ("True", "CanaryAborted")
    assert "v1 keeps 100%" in ready.message
    assert "v2 does not exist" in ready.message
    assert (waiting.status, waiting.reason) == ("True", "ModelVersionNotFound")
    assert outcome.fields["canaryWeight"] == 0


def test_the_stable_versions_modelversion_going_away_is_said_in_ready_with_one_warning():
    ctx = _ctx_with({"phase": "Available", "stableVersion": "v1"})
    note = ("ModelVersionDeleting", "ModelVersion v1 is being deleted")
    outcome = inferencedeployment.observe(
        SPEC, ctx, "Deployment", _deployment("v1", ready=2), Situation(note=note)
    )
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("True", "ModelVersionDeleting")
    assert [(e.reason, e.type) for e in outcome.events] == [("ServedModelVersionGone", "Warning")]


def test_a_deployment_standing_in_for_a_rollout_says_so():
    ctx = _ctx_with({"phase": "Available", "stableVersion": "v1"})
    situation = Situation(fallback="Argo Rollouts is not installed")
    outcome = inferencedeployment.observe(SPEC, ctx, "Deployment", _deployment("v1", ready=2), situation)
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("True", "WorkloadFallback")
    assert "Argo Rollouts is not installed" in ready.message


def test_a_workload_of_the_other_kind_still_serving_counts_during_the_hand_over():
    starting = _rollout("v1", generation=1, observed=1, currentPodHash="new", stableRS="new")
    starting["status"] |= {"replicas": 2, "readyReplicas": 0, "phase": "Progressing"}
    ctx = _ctx_with({"phase": "Available", "stableVersion": "v1"})
    outcome = inferencedeployment.observe(SPEC, ctx, "Rollout", starting, Situation())
    assert outcome.conditions[0].status == "False"
    handing_over = Situation(other=_deployment("v1", ready=2))
    outcome = inferencedeployment.observe(SPEC, ctx, "Rollout", starting, handing_over)
    assert outcome.conditions[0].status == "True"
    assert outcome.fields["readyReplicas"] == 2


def test_the_canary_turning_false_posts_no_event():
    before = {"conditions": [{"type": "CanaryWaiting", "status": "True", "reason": "ModelVersionNotReady"}]}
    outcome = Outcome("Available", (ConditionUpdate("CanaryWaiting", "False", "NothingWaiting", ""),))
    patch, transitions = status_patch(before, outcome, 1)
    assert patch["conditions"][0]["status"] == "False"
    assert transitions == []


def _run(phase: str, *results: dict[str, Any], created: str = "2026-01-01T12:00:00Z") -> dict[str, Any]:
    spec_metrics = [
        {"name": "success-rate", "failureCondition": "result[0] < 0.9"},
        {"name": "latency-p95-ms", "failureCondition": "result[0] > 1000"},
    ]
    return {
        "metadata": {"name": "run", "creationTimestamp": created},
        "spec": {"metrics": spec_metrics},
        "status": {"phase": phase, "metricResults": list(results), "message": f"run {phase}"},
    }


def test_metrics_that_could_not_be_measured_are_not_a_failed_model():
    refused = (
        'Post "http://127.0.0.1:9090/api/v1/query": dial tcp 127.0.0.1:9090: connect: connection refused'
    )
    run = _run(
        "Error",
        {
            "name": "success-rate",
            "phase": "Error",
            "consecutiveError": 5,
            "measurements": [{"phase": "Error", "message": refused}],
        },
    )
    reason, message = analysis_verdict([run])
    assert reason == "MetricsUnavailable"
    assert "success-rate could not be measured (5 errors in a row)" in message
    assert "connection refused" in message


def test_a_breached_metric_is_named_with_its_value_and_condition():
    run = _run(
        "Failed",
        {
            "name": "success-rate",
            "phase": "Successful",
            "measurements": [{"phase": "Successful", "value": "[1]"}],
        },
        {
            "name": "latency-p95-ms",
            "phase": "Failed",
            "failed": 2,
            "measurements": [{"phase": "Failed", "value": "[4120.5]"}],
        },
    )
    older = _run("Error", created="2026-01-01T11:00:00Z")
    reason, message = analysis_verdict([older, run])
    assert reason == "AnalysisFailed"
    breached = "latency-p95-ms = [4120.5] breached its failure condition result[0] > 1000"
    assert message == f"{breached} (2 failed measurement(s))"
    assert analysis_verdict([_run("Successful")]) is None  # nothing failed: a person aborted it


@pytest.mark.parametrize(
    ("kind", "strategy", "desired", "required"),
    [
        ("Rollout", {}, 2, 2),  # 25% of 2 is 0 pods: none may be missing
        ("Rollout", {}, 4, 3),
        ("Rollout", {"canary": {"maxUnavailable": 0}}, 4, 4),
        ("Deployment", {"type": "Recreate"}, 4, 4),
        ("Deployment", {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%"}}, 8, 6),
        ("Deployment", {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}, 1, 1),
        ("Deployment", {"type": "Recreate"}, 0, 0),
    ],
)
def test_the_replicas_required_for_ready(kind, strategy, desired, required):
    assert minimum_available({"spec": {"strategy": strategy}}, kind, desired) == required


def test_a_spec_that_waits_is_not_observed():
    # v1 serves from a Deployment; the spec (generation 4) names v2, not Ready yet: the spec is not
    # applied, observedGeneration stays at 3, CanaryWaiting says why.
    v2 = {
        "kind": "ModelVersion",
        "metadata": {"name": "v2", "namespace": "ns", "uid": "mv2"},
        "status": {"phase": "Compiling"},
    }
    deployment = _deployment("v1", ready=2)
    deployment["metadata"] |= {"uid": "dep-uid", "ownerReferences": [{"uid": "idep-uid", "controller": True}]}
    status = {
        "phase": "Available",
        "stableVersion": "v1",
        "observedGeneration": 3,
        "workloadKind": "Deployment",
    }
    v1 = {"kind": "ModelVersion", "metadata": {"name": "v1", "namespace": "ns", "uid": "mv1"}}
    ctx = _ctx_with(status, ("ModelVersion", v1), ("ModelVersion", v2), ("Deployment", deployment))
    ctx.clients = Clients(api=None, rollouts=False)
    spec = InferenceDeploymentSpec.model_validate(
        {"modelVersionRef": {"name": "v2"}, "rollout": {"strategy": "recreate"}}
    )
    outcome = inferencedeployment.reconcile(spec, ctx)
    assert isinstance(outcome, Outcome)
    assert outcome.fields["observedGeneration"] == 3
    ready, waiting = outcome.conditions
    assert (ready.status, waiting.status, waiting.reason) == ("True", "True", "ModelVersionNotReady")


def test_the_stable_versions_modelversion_being_deleted_is_said_while_it_serves_on():
    v1 = {
        "kind": "ModelVersion",
        "metadata": {
            "name": "v1",
            "namespace": "ns",
            "uid": "mv1",
            "deletionTimestamp": "2026-01-01T12:00:00Z",
        },
    }
    v2 = {"kind": "ModelVersion", "metadata": {"name": "v2", "namespace": "ns", "uid": "mv2"}, "status": {}}
    deployment = _deployment("v1", ready=2)
    deployment["metadata"] |= {"uid": "dep-uid", "ownerReferences": [{"uid": "idep-uid", "controller": True}]}
    status = {
        "phase": "Available",
        "stableVersion": "v1",
        "observedGeneration": 3,
        "workloadKind": "Deployment",
    }
    ctx = _ctx_with(status, ("ModelVersion", v1), ("ModelVersion", v2), ("Deployment", deployment))
    ctx.clients = Clients(api=None, rollouts=False)
    spec = InferenceDeploymentSpec.model_validate(
        {"modelVersionRef": {"name": "v2"}, "replicas": 2, "rollout": {"strategy": "recreate"}}
    )
    outcome = inferencedeployment.reconcile(spec, ctx)
    assert isinstance(outcome, Outcome)
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("True", "ModelVersionDeleting")
    assert "v1 serves on 2 ready replica(s)" in ready.message
    assert "ModelVersion v1, which serves, is being deleted" in ready.message
    assert [(e.reason, e.type) for e in outcome.events] == [("ServedModelVersionGone", "Warning")]


def test_only_the_canarys_own_version_going_away_withdraws_it():
    from mlops_operator.handlers.inferencedeployment import _withdrawn

    rollout = _rollout("v2", generation=2, observed=2, currentPodHash="new", stableRS="old")
    ctx = _ctx_with({"stableVersion": "v1"})
    gone = ("ModelVersionDeleting", "ModelVersion v2 is being deleted")
    assert _withdrawn(SPEC, ctx, rollout, "v2", gone) == gone
    assert _withdrawn(SPEC, ctx, rollout, "v2", ("RepositoryUnavailable", "S3 down")) is None
    assert _withdrawn(SPEC, ctx, rollout, "v2", ("EndpointNotAllowed", "not allowed")) is None
    # The spec names v3 (not Ready yet) while v2's canary runs: v2 is judged on its own.
    v2 = {"kind": "ModelVersion", "metadata": {"name": "v2", "namespace": "ns", "uid": "mv2"}, "status": {}}
    ctx = _ctx_with({"stableVersion": "v1"}, ("ModelVersion", v2))
    assert _withdrawn(SPEC, ctx, rollout, "v3", ("ModelVersionNotFound", "v3"))[0] == "ModelVersionNotReady"
    # The stable's own template is no canary.
    assert _withdrawn(SPEC, ctx, _rollout("v1", generation=2, observed=2), "v1", gone) is None
