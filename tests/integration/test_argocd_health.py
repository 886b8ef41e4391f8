"""Argo CD's view of live objects: every phase the operator writes, on the real apiserver.

Each object of tests/argocd.py's EXPECTED is made here (no status before the operator starts; each
phase with the operator running; a spec change the operator has not seen after it stops), and the
kind's health script (charts/mlops-operator/argocd/) is run on it as Argo CD would. With
MLOPS_CAPTURE_ARGOCD=1 the objects are saved to tests/data/argocd/, where the unit tests run the
scripts on them without a control plane.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes import client

from mlops_operator.api.v1alpha1.kinds import kind_by_name
from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.pods import evict_pod, finish_pod
from mlops_operator.dev.s3 import LocalS3
from tests.argocd import CAPTURED, EXPECTED, assess, for_capture
from tests.integration.conftest import _dataset_body, create_s3_secret, start_operator
from tests.integration.test_trainingrun import SUCCESS, _run, _summary
from tests.samples import SAMPLES, load
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"


def _ready(obj: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def _running_pod(core: client.CoreV1Api, namespace: str, job: str) -> str | None:
    pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
    return next((p.metadata.name for p in pods if p.status.phase == "Running"), None)


class Objects:
    def __init__(self, custom: client.CustomObjectsApi, namespace: str) -> None:
        self.custom, self.namespace = custom, namespace
        self.seen: dict[str, dict[str, Any]] = {}

    def create(self, body: dict[str, Any]) -> None:
        body = {**body, "metadata": {"name": body["metadata"]["name"]}}
        plural = kind_by_name(body["kind"]).plural
        self.custom.create_namespaced_custom_object(G, V, self.namespace, plural, body)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        plural = kind_by_name(kind).plural
        return self.custom.get_namespaced_custom_object(G, V, self.namespace, plural, name)  # type: ignore[no-any-return]

    def wait(self, kind: str, name: str, done: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
        try:
            return wait_for(lambda: obj if done(obj := self.get(kind, name)) else None, what, 60)
        except AssertionError as error:
            status = self.get(kind, name).get("status")
            raise AssertionError(f"{error}\nstatus: {json.dumps(status, indent=1)}") from None

    def wait_reason(self, kind: str, name: str, reason: str) -> dict[str, Any]:
        return self.wait(
            kind, name, lambda o: _ready(o).get("reason") == reason, f"{kind} {name}: Ready reason {reason}"
        )

    def check(self, case: str, obj: dict[str, Any]) -> None:
        """Argo CD's health of `obj` is what EXPECTED says for `case`."""
        status, fragment = EXPECTED[case]
        health = assess(obj)
        assert health["status"] == status, (case, health, obj.get("status"))
        assert fragment in health["message"], (case, health)
        self.seen[case] = for_capture(obj)


def test_every_phase_has_the_health_argocd_should_show(
    control_plane: ControlPlane,
    s3: LocalS3,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    bucket = f"ml-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    for i in range(2):
        s3.client().put_object(Bucket=bucket, Key=f"digits/part-{i}.npz", Body=b"x" * 64)
    create_s3_secret(core, namespace)
    objects = Objects(custom, namespace)

    # Before the operator runs: no status at all.
    digits = _dataset_body(s3, bucket)
    objects.create(digits)
    unavailable = _dataset_body(s3, bucket)
    unavailable["metadata"] = {"name": "unavailable"}
    unavailable["spec"]["source"]["credentialsSecretRef"] = {"name": "missing"}
    objects.create(unavailable)
    strict = _dataset_body(s3, bucket)
    strict["metadata"] = {"name": "strict"}
    strict["spec"]["contract"] = {"minObjects": 10}
    objects.create(strict)
    objects.create(_run("orphan", bucket, datasetRef={"name": "nowhere"}))
    objects.create(load(SAMPLES / "03-modelversion.yaml"))
    objects.create(load(SAMPLES / "04-inferencedeployment.yaml"))
    follower = load(SAMPLES / "04-inferencedeployment.yaml")
    follower["metadata"]["name"] = "follower"
    del follower["spec"]["modelVersionRef"]
    follower["spec"]["modelVersionFrom"] = {"pipelineRef": {"name": "digits"}}  # promotes nothing here
    objects.create(follower)
    monitor = load(SAMPLES / "05-driftmonitor.yaml")
    monitor["spec"] = {"modelVersionRef": {"name": "digits-cnn-v1"}, "currentDatasetRef": {"name": "digits"}}
    objects.create(monitor)
    pipeline = load(SAMPLES / "06-modelpipeline.yaml")
    pipeline["spec"]["datasetRef"] = {"name": "unavailable"}  # never Ready here: no runs start
    pipeline["spec"]["triggers"] = {}
    objects.create(pipeline)
    objects.check("dataset-no-status", objects.get("Dataset", "digits"))
    objects.check("trainingrun-no-status", objects.get("TrainingRun", "orphan"))
    objects.check("modelversion-no-status", objects.get("ModelVersion", "digits-cnn-v1"))
    objects.check("inferencedeployment-no-status", objects.get("InferenceDeployment", "digits"))
    objects.check("driftmonitor-no-status", objects.get("DriftMonitor", "digits"))
    objects.check("modelpipeline-no-status", objects.get("ModelPipeline", "digits"))

    operator = start_operator(control_plane, namespace, tmp_path / "operator.log")
    try:
        for name, extra in {
            "blocked": {"datasetRef": {"name": "unavailable"}},
            "huge": {"resources": {"gpusPerWorker": 16}},
            "paused": {"suspend": True},
            "run": {},
            "bad": {},
            "retry": {"retry": {"maxAttempts": 3, "backoffSeconds": 600}},
            "changed": {},
        }.items():
            objects.create(_run(name, bucket, **extra))

        objects.check("dataset-ready", objects.wait_reason("Dataset", "digits", "Validated"))
        objects.check(
            "dataset-source-unavailable", objects.wait_reason("Dataset", "unavailable", "SourceUnavailable")
        )
        objects.check(
            "dataset-contract-violated", objects.wait_reason("Dataset", "strict", "ContractViolated")
        )
        objects.check(
            "modelversion-training-run-not-found",
            objects.wait_reason("ModelVersion", "digits-cnn-v1", "TrainingRunNotFound"),
        )
        objects.check(
            "inferencedeployment-modelversion-not-ready",
            objects.wait_reason("InferenceDeployment", "digits", "ModelVersionNotReady"),
        )
        objects.check(
            "inferencedeployment-no-promoted-version",
            objects.wait_reason("InferenceDeployment", "follower", "NoPromotedVersion"),
        )
        objects.check(
            "driftmonitor-modelversion-not-ready",
            objects.wait_reason("DriftMonitor", "digits", "ModelVersionNotReady"),
        )
        objects.check(
            "modelpipeline-dataset-not-ready",
            objects.wait_reason("ModelPipeline", "digits", "DatasetNotReady"),
        )
        objects.check(
            "trainingrun-dataset-not-found", objects.wait_reason("TrainingRun", "orphan", "DatasetNotFound")
        )
        objects.check(
            "trainingrun-dataset-not-ready", objects.wait_reason("TrainingRun", "blocked", "DatasetNotReady")
        )
        objects.check(
            "trainingrun-queued-no-node-fits", objects.wait_reason("TrainingRun", "huge", "NoNodeFits")
        )
        objects.check("trainingrun-suspended", objects.wait_reason("TrainingRun", "paused", "Suspended"))
        pods = {}
        for name in ("run", "bad", "retry", "changed"):
            objects.wait_reason("TrainingRun", name, "Running")
            pods[name] = wait_for(
                lambda name=name: _running_pod(core, namespace, f"{name}-a1"), f"the pod of {name}", 60
            )
        objects.check("trainingrun-running", objects.get("TrainingRun", "run"))
        for name, run in (("after-run", "run"), ("after-bad", "bad")):
            mv = load(SAMPLES / "03-modelversion.yaml")
            mv["metadata"]["name"] = name
            mv["spec"]["source"] = {"trainingRunRef": {"name": run}}
            objects.create(mv)
        objects.check(
            "modelversion-waiting-for-training",
            objects.wait(
                "ModelVersion",
                "after-run",
                lambda o: "is Running" in _ready(o, "Ready").get("message", ""),
                "ModelVersion after-run: waiting for a Running TrainingRun",
            ),
        )

        finish_pod(core, namespace, pods["run"], exit_code=0, message=SUCCESS)
        objects.check("trainingrun-succeeded", objects.wait_reason("TrainingRun", "run", "Succeeded"))
        objects.check("modelversion-compiling", objects.wait_reason("ModelVersion", "after-run", "Compiling"))
        failure = _summary(status="Failed", exitCode=78, reason="InvalidConfig", message="unknown model")
        finish_pod(core, namespace, pods["bad"], exit_code=78, message=failure)
        objects.check("trainingrun-failed", objects.wait_reason("TrainingRun", "bad", "InvalidConfig"))
        objects.check(
            "modelversion-training-failed", objects.wait_reason("ModelVersion", "after-bad", "TrainingFailed")
        )
        evict_pod(core, namespace, pods["retry"])
        objects.check(
            "trainingrun-backoff", objects.wait_reason("TrainingRun", "retry", "BackoffBeforeRetry")
        )
        custom.patch_namespaced_custom_object(
            G, V, namespace, "trainingruns", "changed", {"spec": {"hyperparameters": {"epochs": 2}}}
        )
        objects.check(
            "trainingrun-spec-changed",
            objects.wait(
                "TrainingRun",
                "changed",
                lambda o: _ready(o, "SpecAccepted").get("reason") == "ImmutableAfterStart",
                "TrainingRun changed: SpecAccepted=False",
            ),
        )
    finally:
        operator.stop()

    # A spec change the (stopped) operator has not observed yet.
    custom.patch_namespaced_custom_object(
        G, V, namespace, "datasets", "digits", {"spec": {"refreshInterval": "1h"}}
    )
    behind = objects.get("Dataset", "digits")
    assert (behind["metadata"]["generation"], behind["status"]["observedGeneration"]) == (2, 1)
    objects.check("dataset-generation-behind", behind)

    assert set(objects.seen) == set(EXPECTED)
    if os.environ.get("MLOPS_CAPTURE_ARGOCD"):
        CAPTURED.mkdir(parents=True, exist_ok=True)
        for case, obj in objects.seen.items():
            (CAPTURED / f"{case}.json").write_text(json.dumps(obj, indent=1, sort_keys=True) + "\n")
