"""ModelPipeline: the pure decisions (builders.modelpipeline) and the reconcile cases that need no
writes (no clients here: a call would raise, so every reconcile case below decides without one)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from mlops_operator.api.v1alpha1 import ModelPipelineSpec, ModelPipelineStatus
from mlops_operator.builders import modelpipeline as mp
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import modelpipeline as handler
from mlops_operator.handlers.base import Outcome, checked_status, status_patch
from mlops_operator.handlers.context import ReconcileContext
from tests.samples import SAMPLES, load

NOW = datetime(2026, 1, 1, 12, 30, tzinfo=UTC)
CREATED = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)
NS = "team"
FP1, FP2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64
SAMPLE = load(SAMPLES / "06-modelpipeline.yaml")


def _spec(**changes: Any) -> ModelPipelineSpec:
    spec = json.loads(json.dumps(SAMPLE["spec"]))
    triggers = changes.pop("triggers", None)
    if triggers is not None:
        spec["triggers"] = triggers
    spec.update(changes)
    return ModelPipelineSpec.model_validate(spec)


def _seen(fp: str | None = FP1, **kw: Any) -> mp.Observed:
    return mp.Observed(fp, created=CREATED, **kw)


# -- API ----------------------------------------------------------------------------------------------


def test_templates_refuse_what_the_pipeline_sets():
    spec = json.loads(json.dumps(SAMPLE["spec"]))
    spec["modelVersionTemplate"]["source"] = {"trainingRunRef": {"name": "x"}}
    with pytest.raises(ValidationError, match="leave source out of modelVersionTemplate"):
        ModelPipelineSpec.model_validate(spec)
    defaults = ModelPipelineSpec.model_validate({**SAMPLE["spec"], "triggers": {}})
    assert defaults.triggers.on_dataset_change is True
    assert (defaults.successful_runs_history_limit, defaults.failed_runs_history_limit) == (3, 1)


def test_bad_cron_is_refused():
    with pytest.raises(ValidationError, match="cron"):
        _spec(triggers={"schedule": "every night"})


# -- which trigger fires ------------------------------------------------------------------------------


def test_first_look_runs_on_the_data_and_records_it():
    d = mp.decide(_spec(triggers={}), {}, _seen(), NOW)
    assert [t.kind for t in d.triggers] == ["DatasetChange"]
    assert d.markers["lastDatasetFingerprint"] == FP1


def test_same_fingerprint_fires_nothing_new_one_fires_once():
    status = {"lastDatasetFingerprint": FP1}
    assert mp.decide(_spec(triggers={}), status, _seen(), NOW).triggers == ()
    d = mp.decide(_spec(triggers={}), status, _seen(FP2), NOW)
    assert [(t.kind, t.key) for t in d.triggers] == [("DatasetChange", FP2)]


def test_dataset_change_ignored_when_disabled_but_baseline_recorded():
    d = mp.decide(_spec(triggers={"onDatasetChange": False}), {}, _seen(), NOW)
    assert d.triggers == ()
    assert d.markers == {"lastDatasetFingerprint": FP1}


def test_nothing_fires_while_suspended_or_without_data():
    assert mp.decide(_spec(triggers={}, suspend=True), {}, _seen(), NOW).triggers == ()
    assert mp.decide(_spec(triggers={}), {}, _seen(None, manual="go"), NOW).triggers == ()


def test_schedule_fires_once_per_time_latest_missed_only():
    spec = _spec(triggers={"onDatasetChange": False, "schedule": "0 * * * *"})
    status = {"lastDatasetFingerprint": FP1}
    d = mp.decide(spec, status, _seen(), NOW)  # created 00:00, now 12:30: twelve missed, one run
    assert [(t.kind, t.key) for t in d.triggers] == [("Schedule", "2026-01-01T12:00:00Z")]
    assert d.next_schedule == datetime(2026, 1, 1, 13, 0, tzinfo=UTC)
    again = mp.decide(spec, {**status, **d.markers}, _seen(), NOW)
    assert again.triggers == ()
    assert again.next_schedule == datetime(2026, 1, 1, 13, 0, tzinfo=UTC)


def test_manual_annotation_fires_once_per_value():
    status = {"lastDatasetFingerprint": FP1}
    d = mp.decide(_spec(triggers={}), status, _seen(manual="a"), NOW)
    assert [t.kind for t in d.triggers] == ["Manual"]
    assert mp.decide(_spec(triggers={}), {**status, **d.markers}, _seen(manual="a"), NOW).triggers == ()
    assert mp.decide(_spec(triggers={}), {**status, **d.markers}, _seen(manual="b"), NOW).triggers


def test_triggers_seen_together_make_one_run_answering_all():
    d = mp.decide(_spec(triggers={}), {"lastDatasetFingerprint": FP1}, _seen(FP2, manual="x"), NOW)
    assert [t.kind for t in d.triggers] == ["Manual", "DatasetChange"]
    assert d.markers == {"lastManualTrigger": "x", "lastDatasetFingerprint": FP2}


# -- drift --------------------------------------------------------------------------------------------

DRIFT = {"driftMonitorRef": {"name": "dm"}}
SUCCEEDED_ON_FP1 = [
    {"name": "p-1", "number": 1, "trigger": "Manual", "outcome": "Promoted", "datasetFingerprint": FP1}
]


def test_drift_on_unchanged_data_does_not_retrain():
    status = {"lastDatasetFingerprint": FP1, "runs": SUCCEEDED_ON_FP1}
    d = mp.decide(_spec(triggers=DRIFT), status, _seen(drifted=True, drift_transition="t1"), NOW)
    assert d.triggers == ()
    assert d.unfixable is not None
    assert "drifted, training data unchanged since run 1" in d.unfixable
    assert FP1 in d.unfixable
    assert d.markers["lastDriftTransition"] == "t1"  # handled: no loop
    again = mp.decide(
        _spec(triggers=DRIFT), {**status, **d.markers}, _seen(drifted=True, drift_transition="t1"), NOW
    )
    assert again.unfixable is None
    assert again.triggers == ()


def test_drift_with_new_data_or_no_good_run_retrains():
    status = {"lastDatasetFingerprint": FP1, "runs": SUCCEEDED_ON_FP1}
    d = mp.decide(_spec(triggers=DRIFT), status, _seen(FP2, drifted=True, drift_transition="t1"), NOW)
    assert [t.kind for t in d.triggers] == ["Drift", "DatasetChange"]
    failed = [{**SUCCEEDED_ON_FP1[0], "outcome": "Failed"}]
    d = mp.decide(
        _spec(triggers=DRIFT), {**status, "runs": failed}, _seen(drifted=True, drift_transition="t1"), NOW
    )
    assert [t.kind for t in d.triggers] == ["Drift"]


def test_unfixable_clears_when_data_changes_or_drift_ends():
    held = {"type": "DriftUnfixable", "status": "True"}
    assert mp.unfixable_holds(held, _seen(drifted=True), SUCCEEDED_ON_FP1)
    assert not mp.unfixable_holds(held, _seen(FP2, drifted=True), SUCCEEDED_ON_FP1)
    assert not mp.unfixable_holds(held, _seen(drifted=False), SUCCEEDED_ON_FP1)


# -- concurrency, outcomes, history -------------------------------------------------------------------


def test_concurrency_policies_as_cronjob():
    assert mp.plan("Forbid", []) == mp.Plan(True)
    forbid = mp.plan("Forbid", ["p-1"])
    assert not forbid.start
    assert "p-1" in (forbid.skipped_because or "")
    assert mp.plan("Allow", ["p-1"]) == mp.Plan(True)
    assert mp.plan("Replace", ["p-1"]) == mp.Plan(True, supersede=("p-1",))


def _child(phase: str | None) -> dict[str, Any]:
    return {"status": {"phase": phase}} if phase else {}


@pytest.mark.parametrize(
    ("tr", "mv", "outcome"),
    [
        ("Running", "WaitingForTraining", "Running"),
        ("Succeeded", "Ready", "VersionReady"),
        ("Succeeded", "Rejected", "Rejected"),
        ("Failed", "WaitingForTraining", "Failed"),
        ("Succeeded", "Failed", "Failed"),
        (None, None, "Running"),
    ],
)
def test_run_outcome_follows_children(tr, mv, outcome):
    assert mp.run_outcome(_child(tr), _child(mv))[0] == outcome


def test_history_pruning_keeps_newest_per_limit_and_the_promoted():
    runs = [
        {"name": f"p-{i}", "outcome": o, "trainingRun": f"p-{i}"}
        for i, o in enumerate(["Promoted", "Failed", "Promoted", "Rejected", "Promoted", "Running"], 1)
    ]
    runs.append({"name": "p-7", "outcome": "Skipped"})
    assert mp.to_prune(runs, 2, 1) == ["p-2", "p-1"]
    assert mp.to_prune(runs, 2, 1, keep=frozenset({"p-1"})) == ["p-2"]
    assert mp.to_prune(runs, 0, 0) == ["p-5", "p-4", "p-3", "p-2", "p-1"]
    deleted = [{**r, "childrenDeleted": True} if r["name"] in ("p-1", "p-2") else r for r in runs]
    assert mp.to_prune(deleted, 2, 1) == []


def test_history_cap_keeps_running_entries():
    runs = [{"name": "p-1", "outcome": "Running"}] + [
        {"name": f"p-{i}", "outcome": "Skipped"} for i in range(2, 30)
    ]
    capped = mp.cap_history(runs, 5)
    assert len(capped) == 5
    assert capped[0]["name"] == "p-1"
    assert capped[-1]["name"] == "p-29"


def test_run_number_counts_children_made_before_a_crash():
    assert mp.next_number({}, []) == 1
    assert mp.next_number({"lastRunNumber": 3}, [1, 2]) == 4
    assert mp.next_number({"lastRunNumber": 3}, [4]) == 5


def test_children_are_named_owned_labelled_and_write_under_their_run():
    owner = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "ModelPipeline",
        "metadata": {"name": "digits", "namespace": NS, "uid": "u1"},
    }
    handled = mp.handled_record(mp.Trigger("DatasetChange", FP1), FP1, {"lastDatasetFingerprint": FP1}, [])
    training, version = mp.build_children(owner, _spec(), 4, handled)
    for child in (training, version):
        meta = child["metadata"]
        assert meta["name"] == "digits-4"
        assert meta["labels"][mp.RUN_LABEL] == "4"
        assert meta["labels"]["mlops.dev/modelpipeline"] == "digits"
        assert meta["ownerReferences"][0]["uid"] == "u1"
        assert meta["ownerReferences"][0]["controller"] is True
        assert mp.parse_handled(meta["annotations"][mp.HANDLED_ANNOTATION]) == handled
    assert training["spec"]["datasetRef"] == {"name": "digits"}
    assert training["spec"]["output"]["uri"] == "s3://mlops-demo/models/digits-pipeline/digits-4/"
    assert training["spec"]["checkpoint"]["uri"] == "s3://mlops-demo/checkpoints/digits-pipeline/digits-4/"
    assert version["spec"]["source"] == {"trainingRunRef": {"name": "digits-4"}}
    assert version["spec"]["modelName"] == "digits-cnn"


# -- reconcile without writes -------------------------------------------------------------------------


def _obj(kind: str, name: str, status: dict[str, Any], **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": kind,
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"{name}-uid",
            "resourceVersion": "1",
            "creationTimestamp": "2026-01-01T00:00:00Z",
            **meta,
        },
        "spec": {},
        "status": status,
    }


def _dataset(fp: str) -> dict[str, Any]:
    return _obj("Dataset", "digits", {"fingerprint": fp, "conditions": [{"type": "Ready", "status": "True"}]})


def _ctx(cache: Cache, status: dict[str, Any], spec: ModelPipelineSpec) -> ReconcileContext:
    body = _obj("ModelPipeline", "p", status)
    body["spec"] = spec.wire()
    cache.upsert("ModelPipeline", body)
    return ReconcileContext(body, cache=cache, now=lambda: NOW)


def _written(result: Any, status: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(result, Outcome)
    patch, _ = status_patch(status, result, None)
    checked_status(ModelPipelineStatus, status, patch)
    return {**status, **patch}


def test_forbid_skips_and_records_skipped():
    cache = Cache()
    cache.upsert("Dataset", _dataset(FP2))
    running = {
        "name": "p-1",
        "number": 1,
        "trigger": "DatasetChange",
        "outcome": "Running",
        "trainingRun": "p-1",
    }
    status = {"lastDatasetFingerprint": FP1, "lastRunNumber": 1, "runs": [running]}
    ctx = _ctx(cache, status, _spec(triggers={}))
    for kind in ("TrainingRun", "ModelVersion"):  # run 1's children, still at work
        child = _obj(kind, "p-1", {"phase": "Running"}, labels={mp.RUN_LABEL: "1"})
        child["metadata"]["uid"] = f"{kind}-1"
        child["metadata"]["ownerReferences"] = [{"kind": "ModelPipeline", "uid": "p-uid", "controller": True}]
        cache.upsert(kind, child)
    result = handler.reconcile(_spec(triggers={}), ctx)
    out = _written(result, status)
    assert [r["outcome"] for r in out["runs"]] == ["Running", "Skipped"]
    assert out["runs"][1]["name"] == "p-2"
    assert out["lastDatasetFingerprint"] == FP2  # handled: not skipped again
    assert out["active"] == ["p-1"]
    assert any(e.reason == "RunSkipped" for e in result.events)


def test_outcome_follows_children_and_adopts_a_run_made_before_a_crash():
    cache = Cache()
    cache.upsert("Dataset", _dataset(FP2))
    owner = _obj("ModelPipeline", "p", {})
    handled = mp.handled_record(mp.Trigger("DatasetChange", FP2), FP2, {"lastDatasetFingerprint": FP2}, [])
    training, version = mp.build_children({**owner, "kind": "ModelPipeline"}, _spec(), 2, handled)
    for child, phase in ((training, "Running"), (version, "WaitingForTraining")):
        child["status"] = {"phase": phase}
        child["metadata"]["uid"] = child["kind"] + "-2"
        cache.upsert(child["kind"], child)
    ok = _obj("TrainingRun", "p-1", {"phase": "Succeeded"}, labels={mp.RUN_LABEL: "1"})
    ok["metadata"]["ownerReferences"] = training["metadata"]["ownerReferences"]
    mv1 = _obj("ModelVersion", "p-1", {"phase": "Ready"}, labels={mp.RUN_LABEL: "1"})
    mv1["metadata"]["ownerReferences"] = training["metadata"]["ownerReferences"]
    cache.upsert("TrainingRun", ok)
    cache.upsert("ModelVersion", mv1)
    running = {"name": "p-1", "number": 1, "trigger": "Manual", "outcome": "Running", "trainingRun": "p-1"}
    status = {"lastDatasetFingerprint": FP1, "lastRunNumber": 1, "runs": [running]}
    out = _written(handler.reconcile(_spec(triggers={}), _ctx(cache, status, _spec(triggers={}))), status)
    # No championGate in the sample: a Ready version is promoted as it is.
    assert [(r["name"], r["outcome"]) for r in out["runs"]] == [("p-1", "Promoted"), ("p-2", "Running")]
    assert (out["latestPromoted"], out["latestPromotedRun"]) == ("p-1", "p-1")
    assert out["lastRunNumber"] == 2
    assert out["lastDatasetFingerprint"] == FP2  # from the adopted run: no second run for FP2
    assert out["active"] == ["p-2"]


def test_drift_on_unchanged_data_sets_condition_and_one_event():
    cache = Cache()
    cache.upsert("Dataset", _dataset(FP1))
    drifted = {
        "conditions": [{"type": "Drifted", "status": "True", "lastTransitionTime": "2026-01-01T12:00:00Z"}]
    }
    cache.upsert("DriftMonitor", _obj("DriftMonitor", "dm", drifted))
    spec = _spec(triggers={**DRIFT, "onDatasetChange": True})
    status = {"lastDatasetFingerprint": FP1, "lastRunNumber": 1, "runs": SUCCEEDED_ON_FP1}
    result = handler.reconcile(spec, _ctx(cache, status, spec))
    assert isinstance(result, Outcome)
    out = _written(result, status)
    cond = next(c for c in out["conditions"] if c["type"] == "DriftUnfixable")
    assert (cond["status"], cond["reason"]) == ("True", "TrainingDataUnchanged")
    assert "unchanged since run 1" in cond["message"]
    assert [e.reason for e in result.events] == ["DriftUnfixable"]
    assert len(out["runs"]) == 1
    again = handler.reconcile(spec, _ctx(cache, out, spec))
    assert isinstance(again, Outcome)
    assert again.events == ()
    assert _written(again, out)["conditions"] == out["conditions"]
    cache.upsert(
        "Dataset", _dataset(FP2)
    )  # new labelled data: cleared, and it triggers a run (needs a client)
    with pytest.raises(RuntimeError):
        handler.reconcile(spec, _ctx(cache, _written(again, out), spec))
