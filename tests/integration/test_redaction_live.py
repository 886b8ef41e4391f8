"""Secrets a workload plants in its result summary reach neither status nor events, through a real
TrainingRun: the operator process, the real apiserver, a pod that ends the way a kubelet reports it
(mlops_operator.dev.pods) with the planted summary as its termination message."""

from __future__ import annotations

import json

from kubernetes import client

from mlops_operator.dev.pods import finish_pod
from tests.integration.conftest import OperatorProcess
from tests.integration.test_trainingrun import _run, _start, _summary, _wait_phase
from tests.waiting import wait_for

AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
PLANTED = (AWS_KEY_ID, AWS_SECRET, WANDB_KEY)


def _everything_said_about(core: client.CoreV1Api, namespace: str, name: str, obj: dict) -> str:
    events = core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}").items
    said = [{"reason": e.reason, "message": e.message} for e in events]
    return json.dumps(obj.get("status")) + json.dumps(said)


def _assert_clean(text: str) -> None:
    for secret in PLANTED:
        assert secret not in text
        assert secret[4:-4] not in text


def test_secrets_planted_in_a_result_reach_neither_status_nor_events(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    pod = _start(custom, core, namespace, _run("leaky", dataset))
    message = _summary(
        message=f"done; debug id_{AWS_KEY_ID} secret {AWS_SECRET}",
        metrics={"accuracy": 0.9, f"loss_{AWS_KEY_ID}": 0.1, WANDB_KEY: 0.2},
        checkpoint={"uri": f"s3://b/ckpt/{WANDB_KEY}/step-40.pt", "step": 40},
        wandb={"path": f"team/digits/{WANDB_KEY}", "runId": WANDB_KEY},
        artifacts={"model": f"s3://b/models/id_{AWS_KEY_ID}/model.pt"},
    )
    finish_pod(core, namespace, pod, exit_code=0, message=message)
    done = _wait_phase(custom, namespace, "leaky", "Succeeded")
    status = done["status"]
    assert status["metrics"]["accuracy"] == 0.9
    assert status["checkpointURI"] == "s3://b/ckpt/***/step-40.pt"
    assert status["wandbRun"] == "team/digits/***"

    def said() -> str | None:
        text = _everything_said_about(core, namespace, "leaky", done)
        return text if "Succeeded" in text else None

    _assert_clean(wait_for(said, "the Succeeded event", 10))


def test_secrets_planted_in_a_failure_reach_neither_status_nor_events(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    pod = _start(custom, core, namespace, _run("leaky-fail", dataset))
    message = _summary(
        status="Failed",
        exitCode=78,
        reason=f"Leak{AWS_KEY_ID}",
        message=f"W&B refused key {WANDB_KEY} for s3://b/id_{AWS_KEY_ID}/x; "
        f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}",
    )
    finish_pod(core, namespace, pod, exit_code=78, message=message)
    failed = _wait_phase(custom, namespace, "leaky-fail", "Failed")

    def said() -> str | None:
        text = _everything_said_about(core, namespace, "leaky-fail", failed)
        return text if "Leak" in text else None

    text = wait_for(said, "the failure's event", 10)
    _assert_clean(text)
    assert "W&B refused key ***" in json.dumps(failed["status"])
