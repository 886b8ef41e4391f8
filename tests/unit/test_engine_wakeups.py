"""What wakes which object: re-lists, deletions, forged owners, Secrets, transient reasons, resync.

The engine is driven as the informers drive it (child_event / object_event) with a cache of plain
objects; the queue is not started, so what it holds is exactly what was woken.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import REGISTRY

from mlops_operator.api.v1alpha1 import kind_by_name
from mlops_operator.engine.controller import Engine, secret_names
from mlops_operator.engine.workqueue import WorkQueue
from mlops_operator.handlers.base import READY, TRANSIENT_REASONS, Outcome
from mlops_operator.handlers.context import Clients
from mlops_operator.k8s.conditions import ConditionUpdate
from mlops_operator.settings import OperatorConfig
from mlops_operator.timeutil import to_rfc3339


def _obj(
    kind: str, name: str, uid: str, *, namespace: str = "a", owner: str | None = None, **extra: Any
) -> dict:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid, "resourceVersion": "1"}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "controller": True, "kind": "X", "name": "x"}]
    return {"kind": kind, "metadata": meta, **extra}


def _engine(**settings: Any) -> Engine:
    return Engine(OperatorConfig(**settings), Clients(api=None))


def _queued(engine: Engine) -> set[tuple[str, str, str]]:
    with engine.queue._cond:  # the test looks at what was woken, without running it
        return set(engine.queue._ready)


def _seed(engine: Engine) -> None:
    engine.cache.upsert("TrainingRun", _obj("TrainingRun", "run", "run-uid"))
    engine.cache.upsert("Job", _obj("Job", "run-a1", "job-uid", owner="run-uid"))
    engine.cache.upsert("TrainingRun", _obj("TrainingRun", "other", "other-uid", namespace="b"))


def test_a_child_that_vanished_during_a_gap_wakes_its_owner():
    engine = _engine()
    _seed(engine)
    for _, gone in engine.cache.replace_scope("Job", "a", []):  # the re-list after a cut watch
        engine.child_event("Job", "DELETED", gone)
    assert _queued(engine) == {("TrainingRun", "a", "run")}


def test_a_pod_wakes_the_owner_of_its_job_and_sync_wakes_nobody():
    engine = _engine()
    _seed(engine)
    pod = _obj("Pod", "run-a1-x", "pod-uid", owner="job-uid")
    engine.child_event("Pod", "SYNC", pod)
    assert _queued(engine) == set()
    engine.child_event("Pod", "MODIFIED", pod)
    assert _queued(engine) == {("TrainingRun", "a", "run")}


def _foreign_claims(kind: str) -> float:
    return REGISTRY.get_sample_value("mlops_foreign_owner_claims_total", {"kind": kind}) or 0.0


@pytest.mark.parametrize("kind", ["Job", "Service", "Rollout", "HorizontalPodAutoscaler", "AnalysisTemplate"])
def test_a_child_in_another_namespace_claiming_our_object_is_ignored_and_counted(kind):
    engine = _engine()
    _seed(engine)
    before = _foreign_claims(kind)
    forged = _obj(kind, "forged", "f-uid", namespace="b", owner="run-uid")
    engine.cache.upsert(kind, forged)
    engine.child_event(kind, "ADDED", forged)
    assert _queued(engine) == set()
    assert _foreign_claims(kind) == before + 1
    assert forged not in engine.cache.owned(kind, "run-uid")


def test_a_pod_in_another_namespace_owned_by_our_job_or_labelled_with_our_uid_is_ignored():
    engine = _engine()
    _seed(engine)
    engine.cache.upsert("InferenceDeployment", _obj("InferenceDeployment", "idep", "idep-uid"))
    by_owner = _obj("Pod", "p1", "p1", namespace="b", owner="job-uid", status={"phase": "Failed"})
    by_label = _obj("Pod", "p2", "p2", namespace="b")
    by_label["metadata"]["labels"] = {"mlops.dev/inferencedeployment-uid": "idep-uid"}
    for pod in (by_owner, by_label):
        engine.cache.upsert("Pod", pod)
        engine.child_event("Pod", "MODIFIED", pod)
    assert _queued(engine) == set()
    assert engine.cache.owned("Pod", "job-uid") == []
    same_namespace = _obj("Pod", "p3", "p3")
    same_namespace["metadata"]["labels"] = {"mlops.dev/inferencedeployment-uid": "idep-uid"}
    engine.child_event("Pod", "MODIFIED", same_namespace)
    assert _queued(engine) == {("InferenceDeployment", "a", "idep")}


def test_deleting_a_modelversion_wakes_the_inferencedeployments_that_serve_it():
    engine = _engine()
    mv = _obj("ModelVersion", "mv1", "mv-uid", spec={"modelName": "m"})
    idep = _obj("InferenceDeployment", "serve", "i-uid", spec={"modelVersionRef": {"name": "mv1"}})
    engine.cache.upsert("InferenceDeployment", idep)
    engine.object_event(kind_by_name("ModelVersion"), "ADDED", mv)
    engine.queue._ready.clear()
    engine.queue._queued.clear()
    engine.object_event(kind_by_name("ModelVersion"), "DELETED", mv)
    assert ("InferenceDeployment", "a", "serve") in _queued(engine)
    assert engine.cache.get("ModelVersion", "a", "mv1") is None


def test_a_secret_wakes_the_objects_that_name_it_and_their_dependents():
    engine = _engine()
    dataset = _obj(
        "Dataset", "data", "d-uid", spec={"source": {"credentialsSecretRef": {"name": "s3-creds"}}}
    )
    mv = _obj(
        "ModelVersion",
        "mv1",
        "mv-uid",
        spec={"modelName": "m"},
        status={"pinned": {"datasetSpec": {"source": {"credentialsSecretRef": {"name": "s3-creds"}}}}},
    )
    idep = _obj("InferenceDeployment", "serve", "i-uid", spec={"modelVersionRef": {"name": "mv1"}})
    elsewhere = _obj(
        "Dataset",
        "data",
        "d2",
        namespace="b",
        spec={"source": {"credentialsSecretRef": {"name": "s3-creds"}}},
    )
    for body in (dataset, mv, idep, elsewhere):
        engine.cache.upsert(body["kind"], body)
    engine.child_event("Secret", "ADDED", _obj("Secret", "s3-creds", "s-uid"))
    assert {
        ("Dataset", "a", "data"),
        ("ModelVersion", "a", "mv1"),
        ("InferenceDeployment", "a", "serve"),
    } <= _queued(engine)
    assert ("Dataset", "b", "data") not in _queued(engine)
    assert secret_names(mv) == {"s3-creds"}


@pytest.mark.parametrize("reason", sorted(TRANSIENT_REASONS))
def test_every_transient_reason_is_retried_with_a_backoff_that_grows_with_the_outage(reason):
    engine = _engine(retry_min_seconds=2, retry_max_seconds=100)
    outcome = Outcome(phase="Pending", conditions=(ConditionUpdate(READY, "False", reason, "down"),))
    fresh = engine._transient_retry({"status": {}}, outcome)
    assert fresh == 2.0
    since = to_rfc3339(datetime.now(UTC) - timedelta(seconds=60))
    body = {
        "status": {
            "conditions": [{"type": READY, "status": "False", "reason": reason, "lastTransitionTime": since}]
        }
    }
    assert engine._transient_retry(body, outcome) == pytest.approx(30, abs=1)
    long_ago = to_rfc3339(datetime.now(UTC) - timedelta(hours=3))
    body["status"]["conditions"][0]["lastTransitionTime"] = long_ago
    assert engine._transient_retry(body, outcome) == 100.0


@pytest.mark.parametrize("reason", ["DatasetNotFound", "GateFailed", "InvalidSpec", "Running"])
def test_reasons_a_change_must_heal_are_not_polled(reason):
    outcome = Outcome(phase="Pending", conditions=(ConditionUpdate(READY, "False", reason, "x"),))
    assert _engine()._transient_retry({"status": {}}, outcome) is None


def test_a_reconcile_that_raises_is_counted_as_an_error(monkeypatch):
    from mlops_operator.engine import controller

    engine = _engine()
    ds = _obj("Dataset", "broken", "b-uid", spec={"source": {"bucket": "x"}})
    engine.cache.upsert("Dataset", ds)

    def explode(spec: Any, ctx: Any) -> Outcome:
        raise RuntimeError("boom")

    monkeypatch.setattr(
        controller,
        "HANDLERS",
        {**controller.HANDLERS, "Dataset": controller.HANDLERS["Dataset"].__class__(explode)},
    )
    monkeypatch.setattr(controller, "parse_spec", lambda model, spec: spec)
    monkeypatch.setattr(Engine, "_write", lambda self, info, body, outcome: None)
    sample = {"kind": "Dataset", "result": "error"}
    before = REGISTRY.get_sample_value("mlops_reconcile_total", sample) or 0.0
    requeue = engine.process(("Dataset", "a", "broken"))
    assert REGISTRY.get_sample_value("mlops_reconcile_total", sample) == before + 1
    assert requeue == engine.config.retry_min_seconds


def test_one_namespace_never_holds_more_than_its_share_of_workers():
    running: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    import threading

    lock = threading.Lock()

    def process(key: tuple[str, str]) -> None:
        with lock:
            running[key[0]] += 1
            most[key[0]] = max(most[key[0]], running[key[0]])
        time.sleep(0.2)
        with lock:
            running[key[0]] -= 1

    queue: WorkQueue[tuple[str, str]] = WorkQueue(process, workers=4, group=lambda k: k[0], max_per_group=2)
    queue.start()
    try:
        started = time.monotonic()
        for i in range(8):
            queue.add(("a", str(i)))  # a slow tenant queues first...
        queue.add(("b", "0"))  # ...and another tenant still gets a worker at once
        while running["b"] == 0 and most["b"] == 0 and time.monotonic() - started < 5:
            time.sleep(0.01)
        assert time.monotonic() - started < 0.3
        while queue.depth() or any(running.values()):
            time.sleep(0.05)
    finally:
        queue.stop()
    assert most["a"] == 2


def test_a_dataset_waiting_on_its_credentials_is_due_at_once_when_a_secret_changed():
    from mlops_operator.api.v1alpha1 import DatasetSpec
    from mlops_operator.handlers import dataset as dataset_handler
    from mlops_operator.handlers.context import ReconcileContext

    now = datetime.now(UTC)
    checked = to_rfc3339(now - timedelta(seconds=5))
    spec = {"source": {"uri": "s3://bucket/p/", "credentialsSecretRef": {"name": "s3-creds"}}}
    ready = {"type": READY, "status": "False", "reason": "SourceUnavailable", "lastTransitionTime": checked}
    body = _obj("Dataset", "data", "d-uid", spec=spec)
    body["metadata"]["generation"] = 1
    body["status"] = {"observedGeneration": 1, "lastCheckedTime": checked, "conditions": [ready]}
    config = OperatorConfig(retry_min_seconds=3600, retry_max_seconds=3600)
    parsed = DatasetSpec.model_validate(spec)
    waiting = ReconcileContext(body, None, config, now=lambda: now)
    assert dataset_handler.due_in(parsed, waiting) == pytest.approx(3595, abs=1)
    woken = ReconcileContext(body, None, config, now=lambda: now, secrets_changed=True)
    assert dataset_handler.due_in(parsed, woken) == 0.0
    # And the engine marks exactly the objects whose Secret changed.
    engine = _engine()
    engine.cache.upsert("Dataset", body)
    engine.child_event("Secret", "MODIFIED", _obj("Secret", "s3-creds", "s-uid"))
    engine.child_event("Secret", "MODIFIED", _obj("Secret", "unrelated", "u-uid"))
    assert engine._secret_woken == {("Dataset", "a", "data")}
