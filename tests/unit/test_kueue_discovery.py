"""Kueue followed through its Workload CRD: the version read, what of a Workload is kept, and who a
Workload's change wakes (the owner of its Job, never another tenant's object)."""

from __future__ import annotations

from typing import Any

from mlops_operator.engine.controller import Engine
from mlops_operator.engine.discovery import kueue_workloads, slim_workload, storage_version
from mlops_operator.handlers.context import Clients
from mlops_operator.settings import OperatorConfig


def _obj(kind: str, name: str, uid: str, *, namespace: str = "a", owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1"}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "controller": True, "kind": "Job", "name": "x"}]
    return {"kind": kind, "metadata": meta}


def _crd(*versions: tuple[str, bool, bool]) -> dict[str, Any]:
    return {
        "metadata": {"name": "workloads.kueue.x-k8s.io"},
        "spec": {"versions": [{"name": n, "served": s, "storage": st} for n, s, st in versions]},
    }


def test_the_storage_version_is_read_not_assumed():
    assert storage_version(_crd(("v1beta1", True, False), ("v1beta2", True, True))) == "v1beta2"
    assert storage_version(_crd(("v1beta1", True, True), ("v1beta2", True, False))) == "v1beta1"
    assert storage_version(_crd(("v1beta1", False, False))) is None
    (resource,) = kueue_workloads(_crd(("v1beta1", True, False), ("v1beta2", True, True)))
    assert resource.path("team-a") == "/apis/kueue.x-k8s.io/v1beta2/namespaces/team-a/workloads"
    assert not resource.labelled  # Kueue copies none of our labels onto a Workload
    assert kueue_workloads(_crd(("v1beta1", False, False))) == ()


def test_a_workload_is_slimmed_to_what_is_read():
    workload = {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "Workload",
        "metadata": {
            "name": "job-run-a1-1234",
            "namespace": "a",
            "uid": "w-uid",
            "resourceVersion": "7",
            "ownerReferences": [{"uid": "job-uid", "controller": True, "kind": "Job", "name": "run-a1"}],
            "labels": {"kueue.x-k8s.io/job-uid": "job-uid"},
            "managedFields": [{"manager": "kueue"}],
        },
        "spec": {
            "queueName": "team-a",
            "priority": 100,
            "podSets": [
                {"name": "main", "count": 2, "template": {"spec": {"containers": [{"x": "y" * 5000}]}}}
            ],
        },
        "status": {
            "conditions": [
                {
                    "type": "QuotaReserved",
                    "status": "False",
                    "reason": "Pending",
                    "message": "couldn't assign flavors",
                    "lastTransitionTime": "2026-12-03T20:00:00Z",
                    "observedGeneration": 1,
                }
            ],
            "admission": {"clusterQueue": "gpus", "podSetAssignments": [{"name": "main", "flavors": {}}]},
            "resourceRequests": [{"name": "main"}],
        },
    }
    slim = slim_workload(workload)
    assert slim["metadata"]["ownerReferences"] == workload["metadata"]["ownerReferences"]
    assert "managedFields" not in slim["metadata"]
    assert "podSets" not in slim["spec"]
    assert slim["spec"] == {"queueName": "team-a", "priority": 100}
    assert slim["status"]["admission"] == {"clusterQueue": "gpus"}
    assert slim["status"]["conditions"][0]["message"] == "couldn't assign flavors"
    assert len(str(slim)) < len(str(workload)) / 5


def test_a_workload_wakes_the_owner_of_its_job_only():
    engine = Engine(OperatorConfig(), Clients(api=None))
    engine.cache.upsert("TrainingRun", _obj("TrainingRun", "run", "run-uid"))
    engine.cache.upsert("Job", _obj("Job", "run-a1", "job-uid", owner="run-uid"))
    engine.child_event("Workload", "MODIFIED", _obj("Workload", "job-run-a1-x", "w1", owner="job-uid"))
    # Another team's Job's Workload, and one claiming our Job from another namespace: nobody.
    engine.child_event("Workload", "MODIFIED", _obj("Workload", "theirs", "w2", owner="their-job"))
    engine.child_event(
        "Workload", "MODIFIED", _obj("Workload", "forged", "w3", namespace="b", owner="job-uid")
    )
    with engine.queue._cond:
        woken = set(engine.queue._ready)
    assert woken == {("TrainingRun", "a", "run")}
