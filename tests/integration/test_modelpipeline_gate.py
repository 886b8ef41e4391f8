"""The champion/challenger gate end to end: a ModelPipeline whose runs are really trained by the
trainer (CPU), compiled and evaluated through the local pod runner, an InferenceDeployment that
follows the pipeline (spec.modelVersionFrom), served by the real tritonserver behind the real Argo
Rollouts controller.

Run 1 (a briefly trained model) has no champion: it is promoted and served. Run 2 (barely trained)
is scored against it on the same data and rejected: serving is untouched. Run 3 (trained longer)
beats the champion by the margin and is promoted (the operator is killed with SIGKILL while the
champion is scored for it: nothing is made twice); the InferenceDeployment canaries to it.
What is simulated: kwok decides when pods are Running and Ready; Argo Rollouts splits traffic by
replica counts (no traffic router here).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.runner import LocalPodRunner, ServingRuntime
from mlops_operator.dev.s3 import LocalS3
from tests.integration.conftest import OperatorProcess, create_s3_secret, start_operator
from tests.integration.digits_engine import TRAINER, CompiledEngine, create_digits_dataset
from tests.waiting import wait_for, wait_for_events

G, V = "mlops.dev", "v1alpha1"
MARGIN = 0.02
# How long each run trains: the champion briefly, the worse challenger barely, the better one longer.
CHAMPION = {"epochs": 1, "maxSteps": 6, "learningRate": 2e-3, "batchSize": 64, "numWorkers": 0, "seed": 1}
WORSE = {"epochs": 1, "maxSteps": 1, "learningRate": 1e-5, "batchSize": 64, "numWorkers": 0, "seed": 2}
BETTER = {"epochs": 6, "maxSteps": 100000, "learningRate": 2e-3, "batchSize": 64, "numWorkers": 0, "seed": 3}


class Serving:
    """The operator (restartable: a test kills it) and the pod runner."""

    def __init__(
        self, control_plane: ControlPlane, namespace: str, log: Path, runner: LocalPodRunner
    ) -> None:
        self.control_plane, self.namespace, self.log, self.runner = control_plane, namespace, log, runner
        self.operators: list[OperatorProcess] = []
        self.start()

    def start(self) -> None:
        # The local tritonserver has only the python backend.
        env = {"MLOPS_TRITON_CPU_BACKEND": "python"}
        self.operators.append(start_operator(self.control_plane, self.namespace, self.log, env))

    def kill9_and_restart(self) -> None:
        """SIGKILL (no shutdown handlers, no last status patch), then a new operator process."""
        self.operators[-1].process.kill()
        self.operators[-1].process.wait(timeout=10)
        self.start()


@pytest.fixture
def serving(
    control_plane: ControlPlane,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    s3: LocalS3,
    engine: CompiledEngine,
    namespace: str,
    tmp_path: Path,
) -> Iterator[Serving]:
    if not control_plane.argo_rollouts:
        pytest.fail("the session control plane must run Argo Rollouts (tests/integration/conftest.py)")
    create_s3_secret(core, namespace)
    create_digits_dataset(custom, s3, engine, namespace)
    runner = LocalPodRunner(
        api,
        namespace,
        executables={"mlops-trainer": str(TRAINER)},
        serving=ServingRuntime(sd_file=control_plane.prometheus_sd_file),
    )
    runner.start()
    held = None
    try:
        held = Serving(control_plane, namespace, tmp_path / "operator.log", runner)
        yield held
    finally:
        runner.stop()
        for operator in held.operators if held else []:
            operator.stop()


def _pipeline(bucket: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelPipeline",
        "metadata": {"name": "p"},
        "spec": {
            "datasetRef": {"name": "digits"},
            "triggers": {"onDatasetChange": True},  # the first fingerprint starts run 1
            "concurrencyPolicy": "Forbid",
            "trainingRunTemplate": {
                "model": "digits-cnn",
                "hyperparameters": CHAMPION,
                "resources": {"gpusPerWorker": 0, "cpu": "1", "memory": "1Gi"},
                "output": {"uri": f"s3://{bucket}/models/p/"},
            },
            "modelVersionTemplate": {
                "modelName": "digits",
                "compile": {"target": "onnx", "precision": "fp32", "maxBatchSize": 16},
                "evaluation": {"latencyBatches": 5, "warmupBatches": 1},
            },
            "promotion": {"championGate": {"metrics": [{"name": "accuracy", "margin": MARGIN}]}},
        },
    }


def _idep() -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "digits"},
        "spec": {
            "modelVersionFrom": {"pipelineRef": {"name": "p"}},
            "replicas": 2,
            "resources": {"gpus": 0},
            "triton": {"maxBatchSize": 16},
            "rollout": {"steps": [{"setWeight": 50}, {"pause": {"durationSeconds": 5}}, {"setWeight": 100}]},
        },
    }


def _get(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, namespace, plural, name)  # type: ignore[no-any-return]


def _names(custom: client.CustomObjectsApi, namespace: str, plural: str) -> set[str]:
    items = custom.list_namespaced_custom_object(G, V, namespace, plural)["items"]
    return {i["metadata"]["name"] for i in items if not i["metadata"].get("deletionTimestamp")}


def _runs(custom: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    return list((_get(custom, namespace, "modelpipelines", "p").get("status") or {}).get("runs") or [])


def _wait_run(
    custom: client.CustomObjectsApi, namespace: str, name: str, timeout: float = 420
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        run = next((r for r in _runs(custom, namespace) if r["name"] == name), None)
        return run if run and run["outcome"] not in ("Running",) else None

    try:
        return wait_for(probe, f"run {name} to finish", timeout, interval=2)
    except AssertionError as error:
        status = _get(custom, namespace, "modelpipelines", "p").get("status")
        raise AssertionError(f"{error}\npipeline status: {json.dumps(status, indent=1)}") from None


def _idep_status(
    custom: client.CustomObjectsApi, namespace: str, check: Any, what: str, timeout: float = 180
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = _get(custom, namespace, "inferencedeployments", "digits").get("status") or {}
        return status if check(status) else None

    try:
        return wait_for(probe, what, timeout, interval=1)
    except AssertionError as error:
        status = _get(custom, namespace, "inferencedeployments", "digits").get("status")
        raise AssertionError(f"{error}\nstatus: {json.dumps(status, indent=1)}") from None


def _next_run(
    custom: client.CustomObjectsApi, namespace: str, hyperparameters: dict[str, Any], key: str
) -> None:
    """Change the template (the next run takes it; the three sets have the same keys, so a merge
    patch replaces each) and trigger a run by hand."""
    patch = {
        "metadata": {"annotations": {"mlops.dev/trigger": key}},
        "spec": {"trainingRunTemplate": {"hyperparameters": hyperparameters}},
    }
    custom.patch_namespaced_custom_object(G, V, namespace, "modelpipelines", "p", patch)


def test_a_worse_challenger_is_rejected_and_a_better_one_canaries_through_the_following_deployment(
    serving: Serving,
    engine: CompiledEngine,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    custom.create_namespaced_custom_object(G, V, namespace, "inferencedeployments", _idep())
    waiting = _idep_status(
        custom,
        namespace,
        lambda s: any(c.get("reason") == "ModelPipelineNotFound" for c in s.get("conditions", [])),
        "the deployment waiting for its pipeline",
    )
    assert waiting.get("stableVersion") is None
    custom.create_namespaced_custom_object(G, V, namespace, "modelpipelines", _pipeline(engine.bucket))

    # Run 1: no champion yet, promoted as it is; the deployment serves it.
    first = _wait_run(custom, namespace, "p-1")
    assert first["outcome"] == "Promoted", first
    assert "no champion" in first["message"]
    served = _idep_status(
        custom, namespace, lambda s: s.get("phase") == "Available" and s.get("stableVersion") == "p-1",
        "p-1 served by the deployment that follows the pipeline",
    )  # fmt: skip
    assert served["resolvedFrom"]["pipeline"] == "p"
    assert served["resolvedFrom"]["modelVersion"] == "p-1"
    champion = _get(custom, namespace, "modelversions", "p-1")["status"]["metrics"]["accuracy"]

    # Run 2: barely trained; scored against p-1 on the same data and rejected; serving untouched.
    _next_run(custom, namespace, WORSE, "worse")
    worse = _wait_run(custom, namespace, "p-2")
    assert worse["outcome"] == "Rejected", worse
    assert worse["champion"] == "p-1"
    assert worse["championEvaluation"] == "p-2-champion"
    (row,) = worse["comparison"]
    assert row["passed"] is False
    assert (
        row["challenger"] == _get(custom, namespace, "modelversions", "p-2")["status"]["metrics"]["accuracy"]
    )
    scored = _get(custom, namespace, "modelversions", "p-2-champion")
    assert scored["status"]["phase"] == "Ready"
    assert (
        scored["spec"]["source"]["artifactURI"]
        == _get(custom, namespace, "modelversions", "p-1")["status"]["lineage"]["sourceURI"]
    )
    assert row["champion"] == scored["status"]["metrics"]["accuracy"]
    # p-1 evaluated on the same Dataset and split at registration, by the same evaluator: same figure.
    assert row["champion"] == pytest.approx(champion, abs=1e-6)
    assert "serving is untouched (still p-1)" in worse["message"]
    pipeline = _get(custom, namespace, "modelpipelines", "p")["status"]
    assert pipeline["latestPromoted"] == "p-1"
    status = _get(custom, namespace, "inferencedeployments", "digits")["status"]
    assert (status["stableVersion"], status.get("canaryVersion")) == ("p-1", None)

    # Run 3: trained longer; beats p-1 by the margin, promoted, and the deployment canaries to it.
    # The operator is killed (SIGKILL) once the champion's scoring exists: nothing is made twice.
    _next_run(custom, namespace, BETTER, "better")
    wait_for(
        lambda: "p-3-champion" in _names(custom, namespace, "modelversions") or None, "p-3-champion made", 300
    )
    serving.kill9_and_restart()
    better = _wait_run(custom, namespace, "p-3", timeout=600)
    assert better["outcome"] == "Promoted", better["message"]
    assert _get(custom, namespace, "trainingruns", "p-3")["spec"]["hyperparameters"] == BETTER
    (row,) = better["comparison"]
    assert row["passed"] is True
    assert row["challenger"] - row["champion"] >= MARGIN
    assert row["champion"] == pytest.approx(champion, abs=1e-6)
    status = _get(custom, namespace, "modelpipelines", "p")["status"]
    assert status["latestPromoted"] == "p-3"
    assert [(r["name"], r["outcome"]) for r in status["runs"]] == [
        ("p-1", "Promoted"),
        ("p-2", "Rejected"),
        ("p-3", "Promoted"),
    ]
    assert _names(custom, namespace, "modelversions") == {"p-1", "p-2", "p-2-champion", "p-3", "p-3-champion"}
    assert _names(custom, namespace, "trainingruns") == {"p-1", "p-2", "p-3"}
    canary = _idep_status(
        custom, namespace, lambda s: s.get("canaryVersion") == "p-3" or s.get("stableVersion") == "p-3",
        "the canary of p-3",
    )  # fmt: skip
    assert canary["resolvedFrom"]["modelVersion"] == "p-3"
    _idep_status(
        custom, namespace, lambda s: s.get("stableVersion") == "p-3" and s.get("phase") == "Available",
        "p-3 promoted through the canary", 240,
    )  # fmt: skip
    wait_for_events(
        core, namespace, "p", lambda events: {"ChallengerRejected", "Promoted"} <= {e.reason for e in events},
        "the pipeline's gate events",
    )  # fmt: skip
    wait_for_events(
        core, namespace, "digits", lambda events: "RolloutStarted" in {e.reason for e in events},
        "the deployment's canary events",
    )  # fmt: skip
