"""DriftMonitor reconcile decisions from what the cache holds, as data (no clients: a call would
raise, so every case here must decide without one)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from mlops_operator.api.v1alpha1 import DriftMonitorSpec
from mlops_operator.builders.driftmonitor import check_hash
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import driftmonitor
from mlops_operator.handlers.base import Outcome, Unchanged
from mlops_operator.handlers.context import ReconcileContext

NOW = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
NS = "team"
READY = [{"type": "Ready", "status": "True", "reason": "Ok", "message": ""}]
FP_TRAIN, FP_LANDED = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def _obj(kind: str, name: str, status: dict[str, Any], spec: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"name": name, "namespace": NS, "uid": f"{name}-uid", "resourceVersion": "1"},
        "spec": spec or {},
        "status": status,
    }


def _world(*, mv_ready: bool = True, lineage: bool = True, landed_ready: bool = True) -> Cache:
    cache = Cache()
    cache.upsert(
        "TrainingRun",
        _obj(
            "TrainingRun",
            "r1",
            {
                "phase": "Succeeded",
                "datasetFingerprint": FP_TRAIN,
                "modelURI": "s3://b/models/r1/",
                "pinned": {"datasetSpec": {"source": {"uri": "s3://b/digits/"}}},
            },
        ),
    )
    mv_status: dict[str, Any] = {
        "phase": "Ready" if mv_ready else "Compiling",
        "conditions": READY if mv_ready else [],
        "engine": {"uri": "s3://b/models/r1/compiled/mv/model.onnx"},
    }
    if lineage:
        mv_status["lineage"] = {
            "trainingRun": "r1",
            "datasetFingerprint": FP_TRAIN,
            "sourceURI": "s3://b/models/r1/",
        }
    for name in ("mv", "mv2"):
        cache.upsert("ModelVersion", _obj("ModelVersion", name, mv_status))
    cache.upsert(
        "Dataset",
        _obj(
            "Dataset",
            "landed",
            {"fingerprint": FP_LANDED, "conditions": READY if landed_ready else []},
            {"source": {"uri": "s3://b/landed/", "credentialsSecretRef": {"name": "s3"}}},
        ),
    )
    cache.upsert("InferenceDeployment", _obj("InferenceDeployment", "serving", {"stableVersion": "mv2"}))
    cache.upsert("InferenceDeployment", _obj("InferenceDeployment", "empty", {}))
    return cache


def _ctx(cache: Cache, status: dict[str, Any] | None = None, generation: int = 1) -> ReconcileContext:
    body = {
        "metadata": {
            "name": "dm",
            "namespace": NS,
            "uid": "dm-uid",
            "generation": generation,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": status or {},
    }
    return ReconcileContext(body, None, now=lambda: NOW, cache=cache)


def _spec(**extra: Any) -> DriftMonitorSpec:
    target = {"modelVersionRef": {"name": "mv"}} if "inferenceDeploymentRef" not in extra else {}
    return DriftMonitorSpec.model_validate({"currentDatasetRef": {"name": "landed"}, **target, **extra})


def _reason(result: Any) -> str:
    assert isinstance(result, Outcome)
    return next(c.reason for c in result.conditions if c.type == "Ready")


def test_resolves_reference_and_current_from_the_lineage() -> None:
    target = driftmonitor.resolve(_spec(), _ctx(_world()))
    assert isinstance(target, driftmonitor.Target)
    assert target.model_version == "mv"
    assert (target.reference_dataset_uri, target.reference_fingerprint) == ("s3://b/digits/", FP_TRAIN)
    assert (target.current_fingerprint, target.model_uri) == (FP_LANDED, "s3://b/models/r1/")
    # The compile output's prefix (metadata.json and the artifact), as the evaluate stage gets it.
    assert target.engine_uri == "s3://b/models/r1/compiled/mv/"


def test_follows_what_an_inference_deployment_serves() -> None:
    target = driftmonitor.resolve(_spec(inferenceDeploymentRef={"name": "serving"}), _ctx(_world()))
    assert isinstance(target, driftmonitor.Target)
    assert target.model_version == "mv2"
    nothing = driftmonitor.resolve(_spec(inferenceDeploymentRef={"name": "empty"}), _ctx(_world()))
    assert _reason(nothing) == "NothingServed"


def test_waits_for_a_ready_model_with_lineage_and_ready_data() -> None:
    assert _reason(driftmonitor.resolve(_spec(), _ctx(_world(mv_ready=False)))) == "ModelVersionNotReady"
    assert _reason(driftmonitor.resolve(_spec(), _ctx(_world(lineage=False)))) == "NoTrainingLineage"
    assert _reason(driftmonitor.resolve(_spec(), _ctx(_world(landed_ready=False)))) == "DatasetNotReady"
    pending = driftmonitor.reconcile(_spec(), _ctx(_world(mv_ready=False)))
    assert isinstance(pending, Outcome)
    assert pending.phase == "Pending"


def _checked(**last: Any) -> dict[str, Any]:
    record = {
        "number": 4,
        "time": "2026-01-01T12:10:00Z",
        "outcome": "Drifted",
        "modelVersion": "mv",
        "engineURI": "s3://b/models/r1/compiled/mv/",
        "referenceFingerprint": FP_TRAIN,
        "currentFingerprint": FP_LANDED,
        "specHash": check_hash(_spec()),
    } | last
    drifted = {"type": "Drifted", "status": "True", "reason": "Drifted", "message": "m"}
    return {
        "phase": "Drifted",
        "observedGeneration": 1,
        "lastCheck": record,
        "lastCheckTime": record["time"],
        "conditions": [{"type": "Ready", "status": "True", "reason": "Checked", "message": "m"}, drifted],
    }


def test_a_checked_monitor_with_nothing_due_costs_nothing() -> None:
    result = driftmonitor.reconcile(_spec(), _ctx(_world(), _checked()))
    assert result == Unchanged(None)


def test_a_schedule_waits_until_its_next_time() -> None:
    status = _checked() | {"nextCheckTime": "2026-01-01T13:00:00Z"}
    result = driftmonitor.reconcile(_spec(schedule="0 * * * *"), _ctx(_world(), status))
    assert isinstance(result, Unchanged)
    assert result.requeue_after == 30 * 60  # 12:30 -> 13:00


def test_a_new_schedule_is_written_and_a_spec_change_is_observed() -> None:
    result = driftmonitor.reconcile(_spec(schedule="0 * * * *"), _ctx(_world(), _checked(), generation=2))
    assert isinstance(result, Outcome)
    assert result.phase == "Drifted"
    assert result.fields == {"nextCheckTime": "2026-01-01T13:00:00Z"}
    # The Drifted condition is restated, so it never goes missing from a write.
    assert [c.type for c in result.conditions] == ["Ready", "Drifted"]
    assert result.requeue_after == 30 * 60


def test_dependents_wake_the_monitors_of_a_changed_object() -> None:
    cache = _world()
    cache.upsert(
        "DriftMonitor",
        _obj(
            "DriftMonitor",
            "dm",
            {},
            {"modelVersionRef": {"name": "mv"}, "currentDatasetRef": {"name": "landed"}},
        ),
    )
    cache.upsert(
        "DriftMonitor",
        _obj(
            "DriftMonitor",
            "follows",
            {},
            {"inferenceDeploymentRef": {"name": "serving"}, "currentDatasetRef": {"name": "other"}},
        ),
    )
    landed = cache.get("Dataset", NS, "landed")
    assert landed is not None
    assert list(driftmonitor.watching_dataset(cache, landed)) == [("DriftMonitor", NS, "dm")]
    serving = cache.get("InferenceDeployment", NS, "serving")
    assert serving is not None
    assert list(driftmonitor.watching_deployment(cache, serving)) == [("DriftMonitor", NS, "follows")]
    mv = cache.get("ModelVersion", NS, "mv")
    assert mv is not None
    assert sorted(driftmonitor.watching_modelversion(cache, mv)) == [
        ("DriftMonitor", NS, "dm"),
        ("DriftMonitor", NS, "follows"),
    ]
