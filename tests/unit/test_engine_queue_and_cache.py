"""The engine's keyed work queue and watch cache, as plain objects (no cluster)."""

from __future__ import annotations

import threading
import time

from mlops_operator.engine.cache import Cache
from mlops_operator.engine.workqueue import WorkQueue
from tests.waiting import wait_for


def _obj(name: str, rv: int, *, uid: str = "", owner: str | None = None, kind: str = "Job") -> dict:
    meta: dict = {"name": name, "namespace": "ns", "resourceVersion": str(rv), "uid": uid or f"uid-{name}"}
    if owner:
        meta["ownerReferences"] = [{"uid": owner, "controller": True, "kind": "X", "name": "x"}]
    return {"kind": kind, "metadata": meta}


def test_a_burst_of_triggers_for_one_key_is_one_reconcile():
    seen: list[str] = []
    release = threading.Event()

    def process(key: str) -> None:
        seen.append(key)
        release.wait(5)

    queue: WorkQueue[str] = WorkQueue(process, workers=4)
    queue.start()
    try:
        queue.add("run-a")
        wait_for(lambda: seen == ["run-a"], "the first reconcile", 5)
        for _ in range(256):  # 256 pod events while the first reconcile runs
            queue.add("run-a")
        release.set()
        wait_for(lambda: len(seen) == 2, "one more reconcile for the burst", 5)
        time.sleep(0.3)
        assert seen == ["run-a", "run-a"]  # the burst became one reconcile, not 256
    finally:
        release.set()
        queue.stop()


def test_one_slow_object_does_not_hold_the_others():
    done: list[str] = []
    slow = threading.Event()

    def process(key: str) -> None:
        if key == "slow":
            slow.wait(5)
        done.append(key)

    queue: WorkQueue[str] = WorkQueue(process, workers=2)
    queue.start()
    try:
        queue.add("slow")
        for index in range(20):
            queue.add(f"fast-{index}")
        wait_for(lambda: len(done) == 20, "the fast objects, past the slow one", 5)
        assert "slow" not in done
        queue.add("slow")  # already being processed: marked dirty, never a second concurrent run
        slow.set()
        wait_for(lambda: done.count("slow") == 2, "the slow object twice, one after the other", 5)
    finally:
        slow.set()
        queue.stop()


def test_a_key_returns_when_it_said_it_is_due_and_only_the_earliest_wakeup_is_kept():
    calls: list[tuple[str, float]] = []
    start = time.monotonic()

    def process(key: str) -> float | None:
        calls.append((key, time.monotonic() - start))
        return 0.4 if len(calls) == 1 else None

    queue: WorkQueue[str] = WorkQueue(process, workers=1)
    queue.add_after("b", 30)
    queue.add_after("b", 60)  # later than the one held: ignored
    assert queue.delayed() == 1
    queue.start()
    try:
        queue.add("a")
        wait_for(lambda: len(calls) == 2, "the requeued wake-up", 5)
        assert calls[1][0] == "a"
        assert calls[1][1] >= 0.35
        queue.forget("b")
        assert queue.delayed() == 0
    finally:
        queue.stop()


def test_a_paused_queue_hands_out_nothing():
    seen: list[str] = []
    queue: WorkQueue[str] = WorkQueue(seen.append, workers=1)
    queue.pause(True)
    queue.start()
    try:
        queue.add("a")
        time.sleep(0.3)
        assert seen == []
        queue.pause(False)
        wait_for(lambda: seen == ["a"], "the key after resuming", 5)
    finally:
        queue.stop()


def test_children_are_found_by_owner_uid_and_an_older_copy_never_wins():
    cache = Cache()
    cache.upsert("TrainingRun", _obj("run", 1, uid="run-uid", kind="TrainingRun"))
    cache.upsert("Job", _obj("run-a1", 10, owner="run-uid"))
    cache.upsert("Job", _obj("copycat", 11, owner="someone-else"))
    assert [j["metadata"]["name"] for j in cache.owned("Job", "run-uid")] == ["run-a1"]
    newer = _obj("run-a1", 20, owner="run-uid")
    assert cache.upsert("Job", newer)
    assert not cache.upsert("Job", _obj("run-a1", 15, owner="run-uid"))  # a late watch event
    assert cache.get("Job", "ns", "run-a1") is newer
    assert cache.key_of_uid("uid-run-a1") == ("Job", "ns", "run-a1")
    cache.delete("Job", "ns", "run-a1")
    assert cache.owned("Job", "run-uid") == []
    assert cache.key_of_uid("uid-run-a1") is None


def test_a_relist_drops_what_is_gone_and_reports_what_changed():
    cache = Cache()
    cache.upsert("Job", _obj("j", 1, uid="job"))
    cache.upsert("Pod", _obj("p1", 1, owner="job", kind="Pod"))
    cache.upsert("Pod", _obj("p2", 2, owner="job", kind="Pod"))
    cache.upsert("Pod", _obj("p3", 2, owner="job", kind="Pod"))
    changes = cache.replace_scope(
        "Pod",
        "ns",
        [
            _obj("p2", 3, owner="job", kind="Pod"),
            _obj("p3", 2, owner="job", kind="Pod"),
            _obj("p4", 4, kind="Pod"),
        ],
    )
    assert sorted((t, o["metadata"]["name"]) for t, o in changes) == [
        ("ADDED", "p4"),
        ("DELETED", "p1"),
        ("MODIFIED", "p2"),
    ]  # p3 is as it was: not reported, so it wakes nobody
    assert sorted(p["metadata"]["name"] for p in cache.owned("Pod", "job")) == ["p2", "p3"]
    assert cache.count("Pod") == 3


def test_a_child_in_another_namespace_never_reaches_the_owner():
    cache = Cache()
    cache.upsert("TrainingRun", _obj("run", 1, uid="run-uid", kind="TrainingRun"))  # namespace "ns"
    forged = _obj("forged", 2, owner="run-uid")
    forged["metadata"]["namespace"] = "attacker"
    cache.upsert("Job", forged)
    cache.upsert("Job", _obj("run-a1", 3, owner="run-uid"))
    assert [j["metadata"]["name"] for j in cache.owned("Job", "run-uid")] == ["run-a1"]
    assert cache.owner_of(forged) is None
    assert cache.foreign_claim(forged)
    assert cache.owner_of(_obj("run-a1", 3, owner="run-uid")) == ("TrainingRun", "ns", "run")


def test_the_cache_keeps_no_managed_fields():
    cache = Cache()
    job = _obj("run-a1", 1, owner="run-uid")
    job["metadata"]["managedFields"] = [{"manager": "mlops-operator", "fieldsV1": {"f:spec": {}}}]
    cache.upsert("Job", job)
    stored = cache.get("Job", "ns", "run-a1")
    assert stored is not None
    assert "managedFields" not in stored["metadata"]
    assert stored["metadata"]["uid"] == "uid-run-a1"
    assert "managedFields" in job["metadata"]  # the caller's object is left as it was
