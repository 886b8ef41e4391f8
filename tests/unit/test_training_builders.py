"""The TrainingRun's Job and Service builders, and the reading of what a Job did, as plain data."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from mlops_operator.api.v1alpha1 import DatasetSpec, TrainingRunSpec
from mlops_operator.builders.training import (
    TrainingInputs,
    backoff_seconds,
    build_job,
    build_rendezvous_service,
    spec_hash,
)
from mlops_operator.dev.controlplane import KWOK_TOLERATION
from mlops_operator.observation.training import classify_pod_failure, observe
from tests.samples import load, valid_samples

RUN = load(next(p for p in valid_samples() if "trainingrun" in p.name))
DATASET = load(next(p for p in valid_samples() if "dataset" in p.name))


def _inputs(**spec_changes: Any) -> TrainingInputs:
    spec = TrainingRunSpec.model_validate({**RUN["spec"], **spec_changes})
    return TrainingInputs(
        name="digits-r1",
        namespace="team-a",
        uid="uid-1",
        spec=spec,
        dataset=DatasetSpec.model_validate(DATASET["spec"]),
        dataset_fingerprint="sha256:" + "a" * 64,
        attempt=2,
        default_image="trainer:default",
        extra_tolerations=(KWOK_TOLERATION,),
    )


def _env(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_single_node_job():
    job = build_job(_inputs())
    assert job["metadata"]["name"] == "digits-r1-a2"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert job["metadata"]["labels"]["mlops.dev/trainingrun"] == "digits-r1"
    assert job["metadata"]["labels"]["mlops.dev/attempt"] == "2"
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["completions"], spec["parallelism"]) == (0, 1, 1)
    assert "completionMode" not in spec
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["mlops-trainer"]
    assert container["args"] == ["train"]
    assert container["image"] == "trainer:default"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "1", "cpu": "4", "memory": "8Gi"}
    assert "nvidia.com/gpu" not in container["resources"]["requests"]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert KWOK_TOLERATION in pod["tolerations"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "4096Mi"}} in pod["volumes"]


def test_environment_is_the_trainer_contract_and_secrets_are_references():
    env = _env(build_job(_inputs()))
    assert env["MLOPS_MODEL"] == "digits-cnn"
    assert env["MLOPS_DATASET_URI"] == "s3://mlops-demo/datasets/digits/v1/"
    assert env["MLOPS_DATASET_FINGERPRINT"] == "sha256:" + "a" * 64
    assert env["MLOPS_OUTPUT_URI"] == "s3://mlops-demo/models/digits-cnn-r1/"
    assert env["MLOPS_CHECKPOINT_URI"] == "s3://mlops-demo/checkpoints/digits-cnn-r1/"
    assert env["MLOPS_CHECKPOINT_INTERVAL_STEPS"] == "100"
    assert json.loads(env["MLOPS_HYPERPARAMETERS"]) == RUN["spec"]["hyperparameters"]
    assert env["AWS_ENDPOINT_URL_S3"] == "http://127.0.0.1:5000"
    assert env["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert env["WANDB_MODE"] == "offline"
    assert env["WANDB_PROJECT"] == "digits"
    assert "WANDB_API_KEY" not in env


def test_wandb_key_comes_from_its_secret():
    tracking = {"wandb": {"project": "p", "apiKeySecretRef": {"name": "wandb", "key": "api-key"}}}
    env = _env(build_job(_inputs(tracking=tracking)))
    assert env["WANDB_API_KEY"] == {"secretKeyRef": {"name": "wandb", "key": "api-key"}}
    assert env["WANDB_MODE"] == "online"


def test_distributed_job_is_indexed_with_torchrun_and_a_headless_service():
    inputs = _inputs(
        distributed={"nodes": 3, "procsPerNode": 4}, resources={"gpusPerWorker": 4, "gpuProduct": "H100"}
    )
    job = build_job(inputs)
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 3, 3)
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == "digits-r1-rdzv"
    assert pod["nodeSelector"]["nvidia.com/gpu.product"] == "H100"
    container = pod["containers"][0]
    assert container["command"] == [
        "torchrun",
        "--nnodes=3",
        "--nproc-per-node=4",
        "--node-rank=$(NODE_RANK)",
        "--master-addr=digits-r1-a2-0.digits-r1-rdzv",
        "--master-port=29500",
        "-m",
        "mlops_trainer",
    ]
    assert container["args"] == ["train"]
    assert _env(job)["NODE_RANK"] == {
        "fieldRef": {"fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}
    }
    service = build_rendezvous_service(inputs)
    assert service["metadata"]["name"] == "digits-r1-rdzv"
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    # Pods are selected by the run's UID: a user's pod with a copied name label never joins.
    assert service["spec"]["selector"] == {"mlops.dev/trainingrun-uid": "uid-1"}
    assert job["spec"]["template"]["metadata"]["labels"]["mlops.dev/trainingrun-uid"] == "uid-1"


def test_single_node_multi_process_uses_standalone_torchrun():
    job = build_job(_inputs(distributed={"nodes": 1, "procsPerNode": 2}, resources={"gpusPerWorker": 2}))
    assert job["spec"]["template"]["spec"]["containers"][0]["command"][:3] == [
        "torchrun",
        "--standalone",
        "--nproc-per-node=2",
    ]


def test_scheduling_options_reach_the_pod():
    scheduling = {
        "priorityClassName": "training-high",
        "queueName": "team-a",
        "workloadPriorityClassName": "prod-training",
        "nodeSelector": {"pool": "a"},
        "tolerations": [{"key": "spot", "operator": "Exists", "effect": "NoSchedule"}],
    }
    job = build_job(
        _inputs(
            scheduling=scheduling,
            serviceAccountName="trainer",
            image="my:img",
            command=["python"],
            args=["x.py"],
        )
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["priorityClassName"] == "training-high"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["metadata"]["labels"]["kueue.x-k8s.io/priority-class"] == "prod-training"
    assert pod["nodeSelector"] == {"pool": "a"}
    assert {"key": "spot", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["serviceAccountName"] == "trainer"
    container = pod["containers"][0]
    assert (container["image"], container["command"], container["args"]) == ("my:img", ["python"], ["x.py"])


def test_cpu_run_asks_for_no_gpu():
    job = build_job(_inputs(resources={"gpusPerWorker": 0}))
    pod = job["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"].get("limits", {})
    assert all(t.get("key") != "nvidia.com/gpu" for t in pod.get("tolerations", []))


def test_the_same_inputs_build_the_same_job():
    assert build_job(_inputs()) == build_job(_inputs())


def test_spec_hash_ignores_suspend_and_ttl_only():
    base = TrainingRunSpec.model_validate(RUN["spec"])
    assert spec_hash(base) == spec_hash(
        base.model_copy(update={"suspend": True, "ttl_seconds_after_finished": 5})
    )
    assert spec_hash(base) != spec_hash(base.model_copy(update={"hyperparameters": {"epochs": 99}}))


# -- observing -----------------------------------------------------------------------------------


def _job(*conditions: tuple[str, str]) -> dict[str, Any]:
    return {
        "status": {
            "startTime": "2026-01-01T00:00:00Z",
            "conditions": [
                {"type": t, "status": "True", "reason": r, "lastTransitionTime": "2026-01-01T01:00:00Z"}
                for t, r in conditions
            ],
        }
    }


def _pod(phase: str, **status: Any) -> dict[str, Any]:
    return {"metadata": {"annotations": {}}, "status": {"phase": phase, **status}}


def _terminated(code: int, message: str = "", reason: str = "Error") -> dict[str, Any]:
    return {
        "containerStatuses": [
            {
                "name": "trainer",
                "state": {"terminated": {"exitCode": code, "message": message, "reason": reason}},
            }
        ]
    }


SUMMARY = {
    "schema": "mlops.dev/trainer-result/v1",
    "status": "Succeeded",
    "retryable": False,
    "metrics": {"accuracy": 0.97, "loss": 0.1},
}


def test_observe_success_reads_the_summary():
    seen = observe(
        _job(("Complete", "Completed")),
        [_pod("Succeeded", **_terminated(0, json.dumps(SUMMARY), "Completed"))],
    )
    assert seen.state == "Succeeded"
    assert seen.result == SUMMARY
    assert seen.finished_at == "2026-01-01T01:00:00Z"


def test_observe_missing_pending_unschedulable_running():
    assert observe(None, []).state == "Missing"
    assert observe(_job(), []).state == "Pending"
    unschedulable = _pod(
        "Pending",
        conditions=[
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/2 nodes: Insufficient nvidia.com/gpu.",
            }
        ],
    )
    seen = observe(_job(), [unschedulable])
    assert (seen.state, seen.unschedulable) == ("Pending", "0/2 nodes: Insufficient nvidia.com/gpu.")
    assert observe(_job(), [_pod("Running")]).state == "Running"


@pytest.mark.parametrize(
    ("pod", "retryable", "reason"),
    [
        (_pod("Failed", reason="Evicted", message="low on memory"), True, "Evicted"),
        (
            _pod(
                "Failed",
                conditions=[
                    {
                        "type": "DisruptionTarget",
                        "status": "True",
                        "reason": "PreemptionByScheduler",
                        "message": "preempted",
                    }
                ],
            ),
            True,
            "Preempted",
        ),
        (
            _pod(
                "Failed",
                **_terminated(
                    75,
                    json.dumps({**SUMMARY, "retryable": True, "reason": "Preempted", "message": "SIGTERM"}),
                ),
            ),
            True,
            "Preempted",
        ),
        (
            _pod(
                "Failed",
                **_terminated(
                    78,
                    json.dumps(
                        {**SUMMARY, "retryable": False, "reason": "InvalidConfig", "message": "unknown model"}
                    ),
                ),
            ),
            False,
            "InvalidConfig",
        ),
        (_pod("Failed", **_terminated(137, "", "OOMKilled")), False, "OOMKilled"),
        (_pod("Failed", **_terminated(1, "Traceback ... boom")), True, "ExitCode1"),
        (_pod("Failed", **_terminated(3, "weird")), False, "ExitCode3"),
        (_pod("Failed", **_terminated(143, "")), True, "ExitCode143"),
    ],
)
def test_failures_are_classified(pod, retryable, reason):
    failure = classify_pod_failure(pod)
    assert (failure.retryable, failure.reason) == (retryable, reason)
    seen = observe(_job(("Failed", "BackoffLimitExceeded")), [pod])
    assert seen.state == "Failed"
    assert seen.failure == failure


def test_trainer_message_is_reported():
    pod = _pod(
        "Failed",
        **_terminated(
            78,
            json.dumps(
                {**SUMMARY, "retryable": False, "reason": "InvalidConfig", "message": "unknown model 'x'"}
            ),
        ),
    )
    assert classify_pod_failure(pod).message == "unknown model 'x'"


def test_backoff_doubles_up_to_the_cap():
    assert [backoff_seconds(n, 30, 600) for n in (1, 2, 3, 4, 5, 6)] == [30, 60, 120, 240, 480, 600]


def test_a_succeeded_pod_of_an_incomplete_job_still_counts_as_running():
    assert observe(_job(), [_pod("Succeeded", **_terminated(0, "{}", "Completed"))]).state == "Running"


def _volumes(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v["emptyDir"] for v in job["spec"]["template"]["spec"]["volumes"]}


def test_every_emptydir_has_a_size_limit():
    volumes = _volumes(build_job(_inputs()))  # the sample asks for 8Gi of memory
    assert volumes == {
        "scratch": {"sizeLimit": "20Gi"},
        "shm": {"medium": "Memory", "sizeLimit": "4096Mi"},  # half the memory
    }
    assert all("sizeLimit" in v for v in volumes.values())


@pytest.mark.parametrize(
    ("memory", "shm"),
    [
        (None, "1Gi"),
        ("16Gi", "8192Mi"),
        ("1G", "476Mi"),
        ("1.5Gi", "768Mi"),
        ("3e9", "1430Mi"),
        ("100", "50"),
    ],
)
def test_shm_defaults_from_memory(memory, shm):
    resources = {**RUN["spec"]["resources"], "memory": memory}
    if memory is None:
        resources.pop("memory")
    assert _volumes(build_job(_inputs(resources=resources)))["shm"]["sizeLimit"] == shm


def test_emptydir_sizes_are_settings():
    inputs = dataclasses.replace(_inputs(), scratch_size_limit="100Gi", shm_size_limit="2Gi")
    assert _volumes(build_job(inputs)) == {
        "scratch": {"sizeLimit": "100Gi"},
        "shm": {"medium": "Memory", "sizeLimit": "2Gi"},
    }


def test_a_workload_priority_class_needs_a_queue():
    from mlops_operator.api.v1alpha1.common import Scheduling

    with pytest.raises(ValueError, match="needs queueName"):
        Scheduling.model_validate({"workloadPriorityClassName": "prod"})
    assert Scheduling.model_validate({"workloadPriorityClassName": "prod", "queueName": "q"})
