"""An InferenceDeployment that follows a ModelPipeline (spec.modelVersionFrom) instead of naming a
ModelVersion: what it resolves to, what it says while there is nothing to resolve, the record and
event of a promotion, and which changes wake it. As data, no clients (issue 18)."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from mlops_operator.api.v1alpha1 import InferenceDeploymentSpec
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import HANDLERS, inferencedeployment
from mlops_operator.handlers.base import Outcome, status_patch
from mlops_operator.handlers.context import Clients
from mlops_operator.handlers.inferencedeployment.version import (
    NO_PROMOTED,
    PIPELINE_NOT_FOUND,
    RESOLVED,
    resolve,
)
from tests.argocd import assess, captured
from tests.unit.test_inferencedeployment_observe import _ctx_with, _deployment

FOLLOWER = InferenceDeploymentSpec.model_validate(
    {"modelVersionFrom": {"pipelineRef": {"name": "digits"}}, "rollout": {"strategy": "recreate"}}
)
NAMED = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v1"}})
NOW, EARLIER = "2026-01-01T12:00:00Z", "2025-12-31T08:00:00Z"


def _pipeline(promoted: str | None = None, name: str = "digits") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Idle"}
    if promoted:
        status["latestPromoted"] = promoted
    return {"kind": "ModelPipeline", "metadata": {"name": name, "namespace": "ns"}, "status": status}


def test_exactly_one_of_modelversionref_and_modelversionfrom():
    both = {"modelVersionRef": {"name": "v1"}, "modelVersionFrom": {"pipelineRef": {"name": "digits"}}}
    for body in (both, {}):
        with pytest.raises(ValidationError, match="exactly one of modelVersionRef or modelVersionFrom"):
            InferenceDeploymentSpec.model_validate(body)


def test_a_named_version_resolves_to_itself_and_records_nothing():
    resolution = resolve(NAMED, _pipeline("v9"), {"pipeline": "digits", "modelVersion": "v9"}, NOW)
    assert (resolution.name, resolution.problem, resolution.record, resolution.events) == (
        "v1",
        None,
        None,
        (),
    )


def test_a_missing_pipeline_resolves_to_nothing_and_says_so():
    resolution = resolve(FOLLOWER, None, {"pipeline": "digits", "modelVersion": "v1"}, NOW)
    assert resolution.name is None
    assert resolution.problem is not None
    assert resolution.problem[0] == PIPELINE_NOT_FOUND
    assert "ModelPipeline digits (spec.modelVersionFrom) does not exist" in resolution.problem[1]
    # The version it named is dropped: sent as null once (the status is merge-patched), then absent.
    assert resolution.record == {"pipeline": "digits", "modelVersion": None, "resolvedTime": NOW}
    assert resolution.events == ()
    status = {"resolvedFrom": {"pipeline": "digits", "modelVersion": "v1", "resolvedTime": EARLIER}}
    patch = status_patch(status, Outcome("Pending", (), {"resolvedFrom": resolution.record}), 1)[0]
    assert patch["resolvedFrom"] == {"pipeline": "digits", "modelVersion": None, "resolvedTime": NOW}
    after = {"resolvedFrom": {"pipeline": "digits", "resolvedTime": NOW}}
    again = resolve(FOLLOWER, None, after["resolvedFrom"], "2026-01-02T00:00:00Z")
    assert again.record == after["resolvedFrom"]
    assert (
        "resolvedFrom"
        not in status_patch(after, Outcome("Pending", (), {"resolvedFrom": again.record}), 1)[0]
    )


def test_a_pipeline_that_promoted_nothing_yet_resolves_to_nothing_and_says_so():
    resolution = resolve(FOLLOWER, _pipeline(), None, NOW)
    assert resolution.name is None
    assert resolution.problem is not None
    assert resolution.problem[0] == NO_PROMOTED
    assert "ModelPipeline digits has promoted no ModelVersion yet" in resolution.problem[1]
    assert resolution.record == {"pipeline": "digits", "resolvedTime": NOW}


def test_a_promotion_resolves_to_latest_promoted_once_with_an_event():
    first = resolve(FOLLOWER, _pipeline("digits-1"), {"pipeline": "digits", "resolvedTime": EARLIER}, NOW)
    assert (first.name, first.problem) == ("digits-1", None)
    assert first.record == {"pipeline": "digits", "modelVersion": "digits-1", "resolvedTime": NOW}
    assert [(e.reason, e.message) for e in first.events] == [
        (RESOLVED, "ModelPipeline digits promoted digits-1: rolling out")
    ]
    # Read again: the same version, no event, and the time it was first resolved stays.
    again = resolve(FOLLOWER, _pipeline("digits-1"), first.record, "2026-01-02T00:00:00Z")
    assert (again.name, again.record, again.events) == ("digits-1", first.record, ())
    # The next promotion: a new time and a new event.
    second = resolve(FOLLOWER, _pipeline("digits-2"), first.record, "2026-01-03T00:00:00Z")
    assert second.name == "digits-2"
    assert second.record == {
        "pipeline": "digits",
        "modelVersion": "digits-2",
        "resolvedTime": "2026-01-03T00:00:00Z",
    }
    assert [e.message for e in second.events] == ["ModelPipeline digits promoted digits-2: rolling out"]


def test_the_record_is_written_once_and_dropped_when_the_spec_names_a_version_again():
    record = {"pipeline": "digits", "modelVersion": "digits-1", "resolvedTime": NOW}
    status = {"phase": "Available", "observedGeneration": 1, "resolvedFrom": record}
    same = Outcome("Available", (), {"resolvedFrom": dict(record)})
    assert "resolvedFrom" not in status_patch(status, same, 1)[0]
    named = Outcome("Available", (), {"resolvedFrom": None})
    assert status_patch(status, named, 1)[0]["resolvedFrom"] is None  # merge patch: removed


def test_a_follower_of_a_pipeline_without_a_promotion_is_pending():
    ctx = _ctx_with({}, ("ModelPipeline", _pipeline()))
    ctx.clients = Clients(api=None, rollouts=False)
    outcome = inferencedeployment.reconcile(FOLLOWER, ctx)
    assert isinstance(outcome, Outcome)
    assert outcome.phase == "Pending"
    ready = outcome.conditions[0]
    assert (ready.status, ready.reason) == ("False", NO_PROMOTED)
    assert outcome.fields["resolvedFrom"] == {"pipeline": "digits", "resolvedTime": "2026-01-01T12:00:00Z"}
    assert outcome.events == ()


def test_a_promoted_version_that_is_not_ready_waits_while_the_stable_serves_on():
    # v1 serves from a Deployment; the pipeline promoted v2, not Ready: v1 serves on (Ready=True),
    # CanaryWaiting names v2's reason, the record and event say what the pipeline promoted.
    v1 = {"kind": "ModelVersion", "metadata": {"name": "v1", "namespace": "ns", "uid": "mv1"}}
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
        "modelVersion": "v1",
        "observedGeneration": 3,
        "workloadKind": "Deployment",
        "resolvedFrom": {"pipeline": "digits", "modelVersion": "v1", "resolvedTime": "2025-12-01T00:00:00Z"},
    }
    ctx = _ctx_with(
        status,
        ("ModelVersion", v1),
        ("ModelVersion", v2),
        ("Deployment", deployment),
        ("ModelPipeline", _pipeline("v2")),
    )
    ctx.clients = Clients(api=None, rollouts=False)
    spec = InferenceDeploymentSpec.model_validate(
        {
            "modelVersionFrom": {"pipelineRef": {"name": "digits"}},
            "replicas": 2,
            "rollout": {"strategy": "recreate"},
        }
    )
    outcome = inferencedeployment.reconcile(spec, ctx)
    assert isinstance(outcome, Outcome)
    ready, waiting = outcome.conditions[:2]
    assert (ready.status, waiting.status, waiting.reason) == ("True", "True", "ModelVersionNotReady")
    assert "ModelVersion v2 is Compiling" in waiting.message
    assert outcome.fields["modelVersion"] == "v1"
    assert outcome.fields["resolvedFrom"] == {
        "pipeline": "digits",
        "modelVersion": "v2",
        "resolvedTime": "2026-01-01T12:00:00Z",
    }
    assert "ModelPipeline digits promoted v2: rolling out" in [e.message for e in outcome.events]


def _idep(name: str, spec: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": "ns"},
        "spec": spec,
        "status": status or {},
    }


def test_a_pipeline_change_wakes_the_deployments_that_follow_it():
    cache = Cache()
    cache.upsert(
        "InferenceDeployment", _idep("follower", {"modelVersionFrom": {"pipelineRef": {"name": "digits"}}})
    )
    cache.upsert(
        "InferenceDeployment", _idep("other", {"modelVersionFrom": {"pipelineRef": {"name": "mnist"}}})
    )
    cache.upsert("InferenceDeployment", _idep("named", {"modelVersionRef": {"name": "digits"}}))
    woken = set(HANDLERS["ModelPipeline"].dependents(cache, _pipeline("v2")))
    assert woken == {("InferenceDeployment", "ns", "follower")}


def test_a_modelversion_change_wakes_the_deployments_that_resolved_to_it():
    cache = Cache()
    follows = {"modelVersionFrom": {"pipelineRef": {"name": "digits"}}}
    cache.upsert(
        "InferenceDeployment",
        _idep("follower", follows, {"resolvedFrom": {"pipeline": "digits", "modelVersion": "v2"}}),
    )
    cache.upsert(
        "InferenceDeployment",
        _idep("elsewhere", follows, {"resolvedFrom": {"pipeline": "digits", "modelVersion": "v3"}}),
    )
    mv = {"kind": "ModelVersion", "metadata": {"name": "v2", "namespace": "ns"}}
    woken = set(inferencedeployment.waiting_on_modelversion(cache, mv))
    assert woken == {("InferenceDeployment", "ns", "follower")}


@pytest.mark.parametrize(
    ("reason", "health"), [("NoPromotedVersion", "Progressing"), ("ModelPipelineNotFound", "Missing")]
)
def test_argocd_health_of_a_follower_with_nothing_to_serve(reason: str, health: str):
    # The captured follower (tests/data/argocd/, from the real apiserver), with each waiting reason.
    obj = copy.deepcopy(captured()["inferencedeployment-no-promoted-version"])
    obj["status"]["conditions"][0]["reason"] = reason
    assert assess(obj) == {
        "status": health,
        "message": f"{reason}: {obj['status']['conditions'][0]['message']}",
    }
