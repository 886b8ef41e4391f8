"""ModelVersion deletion and in-use protection decisions, as data (no clients: a call would raise)."""

from __future__ import annotations

from typing import Any

import pytest

from mlops_operator.api.v1alpha1 import ModelVersionSpec
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import modelversion
from mlops_operator.handlers.base import Outcome
from mlops_operator.handlers.context import ReconcileContext
from mlops_operator.handlers.modelversion.deletion import (
    IN_USE_FINALIZER,
    SKIP_CLEANUP_ANNOTATION,
    deletion_step,
    served_by,
    serving,
)
from mlops_operator.handlers.modelversion.registry import FINALIZER


def _spec(policy: str = "Archive") -> ModelVersionSpec:
    return ModelVersionSpec.model_validate(
        {
            "modelName": "digits",
            "source": {"trainingRunRef": {"name": "r1"}},
            "registry": {
                "provider": "mlflow",
                "project": "p",
                "trackingURI": "http://mlflow:5000",
                "deletionPolicy": policy,
            },
        }
    )


def _idep(name: str, **status: str) -> dict[str, Any]:
    return {
        "kind": "InferenceDeployment",
        "metadata": {"name": name, "namespace": "ns", "uid": f"{name}-uid", "resourceVersion": "1"},
        "spec": {"modelVersionRef": {"name": "whatever"}},
        "status": status,
    }


def _mv(name: str, *finalizers: str, **status: Any) -> dict[str, Any]:
    return {
        "kind": "ModelVersion",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": f"{name}-uid",
            "resourceVersion": "1",
            "generation": 1,
            "finalizers": list(finalizers),
        },
        "status": status,
    }


def test_a_version_registered_while_status_could_not_say_so_is_still_archived():
    # A delete landed while register() ran: the status write 409'd, so status has no registry
    # version. The registry finalizer is held: the archive looks the version up by UID.
    meta = {"finalizers": [FINALIZER], "deletionTimestamp": "2026-01-01T00:00:00Z"}
    assert deletion_step(_spec(), meta, []).action == "archive"


@pytest.mark.parametrize(
    ("policy", "finalizers", "annotations", "users", "expected"),
    [
        ("Retain", [FINALIZER], {}, [], "release"),
        ("Archive", [FINALIZER], {SKIP_CLEANUP_ANNOTATION: "true"}, [], "release"),
        ("Archive", [], {}, [], "nothing"),
        ("Archive", ["someone-else/finalizer"], {}, [], "nothing"),
        # Served: neither released nor archived, whichever finalizers hold it.
        ("Archive", [FINALIZER, IN_USE_FINALIZER], {}, ["InferenceDeployment a (stable)"], "wait"),
        ("Archive", [FINALIZER], {}, ["InferenceDeployment a (canary)"], "wait"),
        ("Retain", [IN_USE_FINALIZER], {}, ["InferenceDeployment a (stable)"], "wait"),
        ("Retain", [IN_USE_FINALIZER], {}, [], "release"),
        ("Archive", [FINALIZER, IN_USE_FINALIZER], {}, [], "archive"),
    ],
)
def test_the_deletion_step(policy, finalizers, annotations, users, expected):
    meta = {"finalizers": finalizers, "annotations": annotations}
    assert deletion_step(_spec(policy), meta, users).action == expected


def test_who_serves_a_version_and_whom_an_inference_deployment_change_wakes():
    cache = Cache()
    for obj in (
        _idep("web", stableVersion="v1", canaryVersion="v2", canaryWeight=10),
        _idep("aborted", stableVersion="v1", canaryVersion="v3", canaryWeight=0),
        _idep("batch", stableVersion="v2"),
        _idep("other", stableVersion="v3"),
    ):
        cache.upsert("InferenceDeployment", obj)
    for mv in (_mv("v1"), _mv("v2"), _mv("v3"), _mv("v0", IN_USE_FINALIZER), _mv("v9")):
        cache.upsert("ModelVersion", mv)
    assert serving(cache, "ns", "v2") == [
        "InferenceDeployment batch (stable)",
        "InferenceDeployment web (canary)",
    ]
    assert serving(cache, "ns", "v9") == []
    # A canary at 0% (aborted, or before its first step) takes no traffic: v3 serves only as "other"'s stable.
    assert serving(cache, "ns", "v3") == ["InferenceDeployment other (stable)"]
    assert serving(cache, "elsewhere", "v1") == []
    # What it serves now, and v0: held in use by what it (or another) served before.
    woken = sorted(
        name for _, _, name in served_by(cache, _idep("web", stableVersion="v1", canaryVersion="v2"))
    )
    assert woken == ["v0", "v1", "v2"]


def test_a_served_version_being_deleted_waits_and_says_who_serves_it():
    cache = Cache()
    cache.upsert("InferenceDeployment", _idep("web", stableVersion="v1"))
    body = _mv("v1", FINALIZER, IN_USE_FINALIZER, phase="Ready")
    body["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    cache.upsert("ModelVersion", body)
    outcome = modelversion.reconcile(_spec(), ReconcileContext(body, None, cache=cache))
    assert isinstance(outcome, Outcome)
    assert outcome.phase == "Ready"
    (in_use,) = outcome.conditions
    assert (in_use.type, in_use.status, in_use.reason) == ("InUse", "True", "ServedByInferenceDeployment")
    assert "InferenceDeployment web (stable)" in in_use.message
    assert [e.reason for e in outcome.events] == ["DeletionBlocked"]
