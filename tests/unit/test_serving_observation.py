"""What keeps serving pods from running, read from a workload and its pods as plain data; and the
engine waking an InferenceDeployment when one of its serving pods changes."""

from __future__ import annotations

from typing import Any

from mlops_operator.engine.cache import Cache
from mlops_operator.engine.controller import Engine
from mlops_operator.handlers.context import Clients
from mlops_operator.observation.serving import serving_problem
from mlops_operator.settings import OperatorConfig

UID_LABEL = "mlops.dev/inferencedeployment-uid"


def _pod(name: str, revision: str, **status: Any) -> dict[str, Any]:
    labels = {UID_LABEL: "idep-uid", "rollouts-pod-template-hash": revision}
    owner = {"uid": f"rs-{revision}", "controller": True, "kind": "ReplicaSet", "name": f"rs-{revision}"}
    meta = {
        "name": name,
        "namespace": "ns",
        "uid": f"pod-{name}",
        "labels": labels,
        "ownerReferences": [owner],
    }
    return {"kind": "Pod", "metadata": meta, "status": {"phase": "Pending", **status}}


def _waiting(container: str, reason: str, message: str, last: dict[str, Any] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"name": container, "state": {"waiting": {"reason": reason, "message": message}}}
    if last:
        status["lastState"] = {"terminated": last}
    return status


ROLLOUT = {"kind": "Rollout", "status": {"currentPodHash": "new", "conditions": []}}


def test_an_image_that_does_not_pull_is_named_with_its_pod():
    pod = _pod(
        "p1", "new", containerStatuses=[_waiting("triton", "ImagePullBackOff", 'Back-off pulling "x"')]
    )
    assert serving_problem(ROLLOUT, [pod], "new") == ("ImagePullBackOff", 'pod p1: Back-off pulling "x"')


def test_a_crash_looping_fetch_init_container_says_its_last_words_redacted():
    crash = _waiting(
        "fetch-model-repository",
        "CrashLoopBackOff",
        "back-off 40s",
        {
            "exitCode": 69,
            "message": "cannot read s3://b/m/: AccessDenied aws_secret_access_key=AKIAverysecretvalue123",
        },
    )
    reason, message = serving_problem(ROLLOUT, [_pod("p1", "new", initContainerStatuses=[crash])], "new") or (
        "",
        "",
    )
    assert reason == "CrashLoopBackOff"
    assert "last exit 69" in message
    assert "AccessDenied" in message
    assert "AKIAverysecretvalue123" not in message


def test_only_the_current_revisions_pods_count_and_a_running_pod_is_no_problem():
    old = _pod("old", "old", containerStatuses=[_waiting("triton", "CrashLoopBackOff", "back-off")])
    running = _pod("p2", "new", containerStatuses=[{"name": "triton", "state": {"running": {}}}])
    assert serving_problem(ROLLOUT, [old, running], "new") is None
    assert serving_problem(ROLLOUT, [old], None) == ("CrashLoopBackOff", "pod old: back-off")


def test_no_node_for_the_pod_and_pods_that_cannot_be_created():
    pending = _pod(
        "p1",
        "new",
        conditions=[
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/4 nodes"}
        ],
    )
    assert serving_problem(ROLLOUT, [pending], "new") == ("Unschedulable", "pod p1: 0/4 nodes")
    refused = {
        "kind": "Deployment",
        "status": {
            "conditions": [
                {
                    "type": "ReplicaFailure",
                    "status": "True",
                    "reason": "FailedCreate",
                    "message": 'serviceaccount "x" not found',
                }
            ]
        },
    }
    assert serving_problem(refused, []) == ("FailedCreate", 'serviceaccount "x" not found')
    stalled = {
        "kind": "Deployment",
        "status": {
            "conditions": [
                {
                    "type": "Progressing",
                    "status": "False",
                    "reason": "ProgressDeadlineExceeded",
                    "message": "too slow",
                }
            ]
        },
    }
    assert serving_problem(stalled, []) == ("ProgressDeadlineExceeded", "too slow")


def test_a_serving_pods_change_wakes_its_inference_deployment():
    engine = Engine(OperatorConfig(), Clients(api=None), Cache())
    idep = {
        "kind": "InferenceDeployment",
        "metadata": {"name": "digits", "namespace": "ns", "uid": "idep-uid"},
    }
    engine.cache.upsert("InferenceDeployment", idep)
    assert engine._owner_key(_pod("p1", "new")) == ("InferenceDeployment", "ns", "digits")
    stranger = _pod("p2", "new")
    stranger["metadata"]["labels"][UID_LABEL] = "another-uid"
    assert engine._owner_key(stranger) is None
