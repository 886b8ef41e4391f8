"""The real operator process (`mlopsctl run`) against the real apiserver."""

from __future__ import annotations

import time
import urllib.request

from kubernetes import client

from mlops_operator.api.v1alpha1 import GROUP, VERSION, kind_by_name
from tests.integration.conftest import OperatorProcess
from tests.samples import load, valid_samples
from tests.waiting import wait_for


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.read().decode()
    except OSError:
        return None


def _ready(obj: dict) -> dict | None:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)


def test_objects_waiting_on_others_say_so_then_stay_quiet(
    operator: OperatorProcess, custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
):
    # The sample ModelVersion (whose TrainingRun does not exist here) and InferenceDeployment (whose
    # ModelVersion is not Ready) wait. Each kind has tests of its own.
    created = []
    for path in valid_samples():
        doc = load(path)
        if doc["kind"] not in ("ModelVersion", "InferenceDeployment"):
            continue
        info = kind_by_name(doc["kind"])
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, info.plural, doc)
        created.append((info.plural, doc["metadata"]["name"]))

    def reconciled() -> list[dict] | None:
        objs = [custom.get_namespaced_custom_object(GROUP, VERSION, namespace, p, n) for p, n in created]
        done = all(o.get("status", {}).get("observedGeneration") == o["metadata"]["generation"] for o in objs)
        return objs if done else None

    objs = wait_for(reconciled, "every object to be reconciled", 60)
    for obj in objs:
        ready = _ready(obj)
        assert ready is not None
        if obj["kind"] == "InferenceDeployment":
            assert (ready["status"], ready["reason"]) == ("False", "ModelVersionNotReady")
            assert obj["status"]["phase"] == "Pending"
        else:
            assert (ready["status"], ready["reason"]) == ("False", "TrainingRunNotFound")
            assert obj["status"]["phase"] == "WaitingForTraining"
        assert ready["observedGeneration"] == obj["metadata"]["generation"]
        # The engine keeps no per-object bookkeeping on the object: nothing in status, no annotations,
        # no finalizers (kopf only watches; it never patches our objects).
        assert "kopf" not in obj["status"]
        assert not any(
            k.startswith("mlops.dev/") or "kopf" in k for k in obj["metadata"].get("annotations", {})
        )
        assert not obj["metadata"].get("finalizers")

    events = wait_for(
        lambda: [
            e for e in core.list_namespaced_event(namespace).items if e.reason == "ModelVersionNotReady"
        ],
        "ModelVersionNotReady events",
        30,
    )
    assert {e.involved_object.kind for e in events} == {"InferenceDeployment"}

    # Idle: nothing changes, so the operator writes nothing.
    versions = {
        (p, n): custom.get_namespaced_custom_object(GROUP, VERSION, namespace, p, n)["metadata"][
            "resourceVersion"
        ]
        for p, n in created
    }
    time.sleep(5)
    after = {
        (p, n): custom.get_namespaced_custom_object(GROUP, VERSION, namespace, p, n)["metadata"][
            "resourceVersion"
        ]
        for p, n in created
    }
    assert after == versions

    metrics = operator.metrics()
    assert 'mlops_reconcile_total{kind="ModelVersion",result="ok"}' in metrics
    assert "mlops_reconcile_duration_seconds_bucket" in metrics


def test_spec_change_is_reconciled_for_the_new_generation(
    operator: OperatorProcess, custom: client.CustomObjectsApi, namespace: str
):
    doc = load(next(p for p in valid_samples() if "modelversion" in p.name))
    name = doc["metadata"]["name"]
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", doc)
    wait_for(
        lambda: (
            custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", name)
            .get("status", {})
            .get("observedGeneration")
            == 1
        ),
        "generation 1 to be observed",
        60,
    )
    first = _ready(custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", name))
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "modelversions", name, {"spec": {"stage": "Production"}}
    )
    obj = wait_for(
        lambda: (
            (o := custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", name))
            .get("status", {})
            .get("observedGeneration")
            == 2
            and o
        ),
        "generation 2 to be observed",
        60,
    )
    ready = _ready(obj)
    assert ready is not None
    assert first is not None
    assert ready["observedGeneration"] == 2
    # Same status, so the transition time stays.
    assert ready["lastTransitionTime"] == first["lastTransitionTime"]
