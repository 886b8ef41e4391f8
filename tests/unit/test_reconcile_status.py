"""A reconcile's outcome becomes a minimal status patch; the second identical reconcile writes nothing."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from mlops_operator.api.v1alpha1 import KINDS, InferenceDeploymentSpec, TrainingRunSpec, kind_by_name
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import HANDLERS
from mlops_operator.handlers.base import Outcome, checked_status, parse_spec, status_patch
from mlops_operator.handlers.context import Clients, ReconcileContext
from mlops_operator.k8s.conditions import REASON, ConditionUpdate, condition_reason
from tests.samples import load, valid_samples


def _merge(status: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    return {**status, **patch}


def test_first_reconcile_writes_phase_generation_and_ready():
    outcome = Outcome("Pending", (ConditionUpdate("Ready", "False", "NotImplemented", "later"),))
    patch, transitions = status_patch({}, outcome, 4, now="2026-01-01T00:00:00Z")
    assert patch["phase"] == "Pending"
    assert patch["observedGeneration"] == 4
    assert patch["conditions"][0]["reason"] == "NotImplemented"
    assert [t.reason for t in transitions] == ["NotImplemented"]


def test_unchanged_outcome_writes_nothing_and_posts_no_event():
    outcome = Outcome(
        "Pending", (ConditionUpdate("Ready", "False", "NotImplemented", "later"),), {"attempt": 1}
    )
    patch, _ = status_patch({}, outcome, 4, now="2026-01-01T00:00:00Z")
    status = _merge({}, patch)
    again, transitions = status_patch(status, outcome, 4, now="2026-01-01T01:00:00Z")
    assert again == {}
    assert transitions == []


def test_new_generation_is_recorded():
    outcome = Outcome("Pending", (ConditionUpdate("Ready", "False", "NotImplemented"),))
    status = _merge({}, status_patch({}, outcome, 1)[0])
    patch, transitions = status_patch(status, outcome, 2)
    assert patch["observedGeneration"] == 2
    assert patch["conditions"][0]["observedGeneration"] == 2
    assert transitions == []


def test_only_changed_fields_are_patched():
    first = Outcome(
        "Running", (ConditionUpdate("Ready", "False", "Running"),), {"attempt": 1, "jobName": "j"}
    )
    status = _merge({}, status_patch({}, first, 1)[0])
    second = Outcome(
        "Running", (ConditionUpdate("Ready", "False", "Running"),), {"attempt": 2, "jobName": "j"}
    )
    patch, _ = status_patch(status, second, 1)
    assert patch == {"attempt": 2}


def test_invalid_spec_becomes_a_condition_naming_the_field():
    spec = {
        "datasetRef": {"name": "d"},
        "model": "m",
        "output": {"uri": "s3://bucket/o/"},
        "resources": {"gpusPerWorker": 1},
        "distributed": {"procsPerNode": 4},
    }
    outcome = parse_spec(TrainingRunSpec, spec)
    assert isinstance(outcome, Outcome)
    assert outcome.phase == "Failed"
    (ready,) = outcome.conditions
    assert (ready.status, ready.reason) == ("False", "InvalidSpec")
    assert "procsPerNode" in ready.message


def test_every_kind_has_a_controller():
    assert set(HANDLERS) == {i.kind for i in KINDS}


def test_an_inferencedeployment_without_its_modelversion_is_pending_saying_so():
    doc = load(next(p for p in valid_samples() if "inferencedeployment" in p.name))
    doc["metadata"].update(namespace="ns", generation=1, uid="idep-uid")
    mv_name = doc["spec"]["modelVersionRef"]["name"]
    cache = Cache()
    mv = {"metadata": {"name": mv_name, "namespace": "ns", "uid": "mv-uid", "resourceVersion": "1"}}
    cache.upsert("ModelVersion", {**mv, "status": {"phase": "Compiling"}})
    spec = parse_spec(InferenceDeploymentSpec, doc["spec"])
    assert not isinstance(spec, Outcome)
    clients = Clients(api=None)
    outcome = HANDLERS["InferenceDeployment"].reconcile(spec, ReconcileContext(doc, clients, cache=cache))
    assert isinstance(outcome, Outcome)
    assert outcome.phase == "Pending"
    (ready,) = outcome.conditions
    assert (ready.status, ready.reason) == ("False", "ModelVersionNotReady")
    assert f"ModelVersion {mv_name} is Compiling" in ready.message


def test_a_modelversion_outcome_is_written_once_then_nothing():
    doc = load(next(p for p in valid_samples() if "modelversion" in p.name))
    doc["metadata"].update(namespace="ns", generation=1, uid="mv-uid")
    run_name = doc["spec"]["source"]["trainingRunRef"]["name"]
    cache = Cache()
    run = {"metadata": {"name": run_name, "namespace": "ns", "uid": "tr-uid", "resourceVersion": "1"}}
    cache.upsert("TrainingRun", {**run, "status": {"phase": "Running"}})
    info = kind_by_name(doc["kind"])
    spec = parse_spec(info.spec_model, doc["spec"])
    outcome = HANDLERS[info.kind].reconcile(spec, ReconcileContext(doc, cache=cache))
    assert isinstance(outcome, Outcome)
    changes, transitions = status_patch({}, outcome, 1)
    assert changes["phase"] == "WaitingForTraining"
    assert changes["observedGeneration"] == 1
    assert [t.reason for t in transitions] == ["WaitingForTraining"]
    assert f"TrainingRun {run_name} is Running" in transitions[0].message
    checked_status(info.status_model, {}, changes)
    again, transitions = status_patch(changes, outcome, 1)
    assert again == {}
    assert transitions == []


def test_status_is_proven_against_the_status_model_before_it_is_written():
    info = kind_by_name("TrainingRun")
    good = {"phase": "Running", "attempt": 1, "gpuSeconds": 12.5}
    assert checked_status(info.status_model, {}, good) == good
    for bad in (
        {"gpuSeconds": float("nan")},
        {"phase": "Exploded"},
        {"attempt": "1"},
        {"metrics": {"a": "x"}},
    ):
        with pytest.raises(ValidationError):
            checked_status(info.status_model, {}, bad)


def test_free_form_reasons_become_valid_condition_reasons():
    outcome = Outcome(
        "Failed",
        (ConditionUpdate("Ready", "False", "CUDA error: out of memory " + "x" * 2000, "m" * 5000),),
    )
    changes, transitions = status_patch({}, outcome, 1)
    (ready,) = changes["conditions"]
    assert ready["reason"].startswith("CUDAErrorOutOfMemory")
    assert REASON.match(ready["reason"])
    assert len(ready["reason"]) <= 128
    assert len(ready["message"]) == 1024
    assert transitions[0].reason == ready["reason"]
    assert condition_reason("42") == "Unknown"
    assert condition_reason("Evicted") == "Evicted"
