"""InferenceDeployment end to end: real apiserver, kwok nodes, moto S3, the real trainer compiling and
evaluating through the local pod runner, the real tritonserver serving every serving pod as a local
process, the real Argo Rollouts controller and a real Prometheus scraping those servers.

What is simulated: kwok decides when pods are Running and Ready (not Triton's readiness), and Argo
Rollouts without a traffic router splits traffic by replica counts; the tests send requests to the
pods' servers themselves.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.runner import LocalPodRunner, ServingRuntime
from mlops_operator.dev.s3 import DEV_REGION, LocalS3
from tests.integration.conftest import OperatorProcess, create_s3_secret, start_operator
from tests.integration.digits_engine import TRAINER, CompiledEngine
from tests.waiting import wait_for, wait_for_events

G, V = "mlops.dev", "v1alpha1"


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
) -> Iterator[tuple[OperatorProcess, LocalPodRunner]]:
    if not (control_plane.argo_rollouts and control_plane.prometheus):
        pytest.fail(
            "the session control plane must run Argo Rollouts and Prometheus (tests/integration/conftest.py)"
        )
    create_s3_secret(core, namespace)
    dataset = {
        "apiVersion": f"{G}/{V}",
        "kind": "Dataset",
        "metadata": {"name": "digits"},
        "spec": {
            "source": {
                "uri": f"s3://{engine.bucket}/datasets/digits/v1/",
                "endpointURL": s3.endpoint_url,
                "region": DEV_REGION,
                "credentialsSecretRef": {"name": "s3-credentials"},
            }
        },
    }
    custom.create_namespaced_custom_object(G, V, namespace, "datasets", dataset)
    operator = start_operator(
        control_plane,
        namespace,
        tmp_path / "operator.log",
        {
            "MLOPS_TRITON_CPU_BACKEND": "python",  # the local tritonserver has only the python backend
            "MLOPS_PROMETHEUS_ADDRESS": control_plane.prometheus_url,
        },
    )
    runner = LocalPodRunner(
        api,
        namespace,
        executables={"mlops-trainer": str(TRAINER)},
        serving=ServingRuntime(sd_file=control_plane.prometheus_sd_file),
    )
    runner.start()
    try:
        yield operator, runner
    finally:
        runner.stop()
        operator.stop()


def _modelversion(name: str, engine: CompiledEngine) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelVersion",
        "metadata": {"name": name},
        "spec": {
            "modelName": "digits",
            "source": {"artifactURI": f"s3://{engine.bucket}/models/digits/"},
            "evaluation": {"datasetRef": {"name": "digits"}, "latencyBatches": 10},
            "compile": {"target": "onnx", "precision": "fp32", "maxBatchSize": 16},
        },
    }


def _idep(model_version: str, **spec: Any) -> dict[str, Any]:
    base = {
        "modelVersionRef": {"name": model_version},
        "replicas": 2,
        "resources": {"gpus": 0},
        "triton": {"maxBatchSize": 16, "dynamicBatching": {"preferredBatchSizes": [4, 8]}},
        "rollout": {
            "steps": [{"setWeight": 50}, {"analysis": {"durationSeconds": 30}}, {"setWeight": 100}],
            "analysis": {"successRateMin": 0.9, "latencyP95MaxMs": 1000, "intervalSeconds": 10},
        },
    }
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "digits"},
        "spec": base | spec,
    }


def _get(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, namespace, plural, name)  # type: ignore[no-any-return]


def _ready(obj: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def _wait(
    custom: client.CustomObjectsApi,
    namespace: str,
    plural: str,
    name: str,
    check: Any,
    what: str,
    timeout: float = 120,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = _get(custom, namespace, plural, name)
        return obj if check(obj) else None

    try:
        return wait_for(probe, what, timeout, interval=1)
    except AssertionError as error:
        status = _get(custom, namespace, plural, name).get("status")
        raise AssertionError(f"{error}\nstatus: {json.dumps(status, indent=1)}") from None


def _ready_version(
    custom: client.CustomObjectsApi, namespace: str, name: str, engine: CompiledEngine
) -> None:
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _modelversion(name, engine))
    _wait(
        custom,
        namespace,
        "modelversions",
        name,
        lambda o: o.get("status", {}).get("phase") in ("Ready", "Rejected", "Failed"),
        f"ModelVersion {name} compiled and evaluated by the real trainer",
        180,
    )
    assert _get(custom, namespace, "modelversions", name)["status"]["phase"] == "Ready"


def _infer(url: str, batch: np.ndarray) -> np.ndarray:
    body = {
        "inputs": [
            {"name": "images", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel().tolist()}
        ]
    }
    request = urllib.request.Request(
        f"{url}/v2/models/digits/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    output = answer["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


class Traffic:
    """Requests to every serving pod the runner runs, all the time: what the analysis measures."""

    def __init__(self, runner: LocalPodRunner) -> None:
        self.runner = runner
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.batch = np.random.default_rng(0).random((2, 1, 8, 8), dtype=np.float32)

    def _loop(self) -> None:
        while not self.stop.is_set():
            for url in list(self.runner.endpoints.values()):
                with contextlib.suppress(OSError):  # a server still starting
                    _infer(url, self.batch)
            time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def test_first_version_is_served_then_a_new_version_goes_through_the_canary(
    serving: tuple[OperatorProcess, LocalPodRunner],
    engine: CompiledEngine,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    operator, runner = serving
    _ready_version(custom, namespace, "v1", engine)
    idep = custom.create_namespaced_custom_object(G, V, namespace, "inferencedeployments", _idep("v1"))
    # What an operator that ran before Argo Rollouts was installed left: a Deployment of this
    # InferenceDeployment (no pods). Once the Rollout serves, it goes.
    apps = client.AppsV1Api(core.api_client)
    apps.create_namespaced_deployment(namespace, _leftover_deployment(idep))
    available = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("phase") == "Available", "v1 Available",
    )  # fmt: skip
    wait_for(
        lambda: not apps.list_namespaced_deployment(namespace).items, "the leftover Deployment deleted", 30
    )
    status = available["status"]
    assert status["workloadKind"] == "Rollout"
    assert status["stableVersion"] == "v1"
    assert status.get("canaryVersion") is None
    assert status["endpoint"] == f"http://digits-triton.{namespace}.svc:8000"
    assert status["repository"]["uri"].endswith("/")
    rollout = client.CustomObjectsApi(core.api_client).get_namespaced_custom_object(
        "argoproj.io", "v1alpha1", namespace, "rollouts", "digits-triton"
    )
    pod = rollout["spec"]["template"]["spec"]
    assert pod["initContainers"][0]["args"] == ["fetch-model-repository"]
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["automountServiceAccountToken"] is False
    assert rollout["metadata"]["ownerReferences"][0]["kind"] == "InferenceDeployment"

    # A real answer from a real tritonserver serving v1, equal to ONNX Runtime's.
    import onnxruntime as ort

    url = wait_for(lambda: next(iter(runner.endpoints.values()), None), "a serving pod's server", 60)
    batch = np.random.default_rng(1).random((3, 1, 8, 8), dtype=np.float32)
    (answer,) = wait_for(lambda: _try_infer(url, batch), "Triton to answer", 60)
    expected = ort.InferenceSession(engine.onnx, providers=["CPUExecutionProvider"]).run(
        None, {"images": batch}
    )[0]
    np.testing.assert_allclose(answer, expected, rtol=1e-5, atol=1e-5)

    # v2: a canary, analysed on live traffic by the real Prometheus, then promoted.
    _ready_version(custom, namespace, "v2", engine)
    with Traffic(runner):
        custom.patch_namespaced_custom_object(
            G, V, namespace, "inferencedeployments", "digits", {"spec": {"modelVersionRef": {"name": "v2"}}}
        )
        canary = _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o.get("status", {}).get("canaryVersion") == "v2", "the canary of v2",
        )  # fmt: skip
        assert canary["status"]["stableVersion"] == "v1"
        assert canary["status"]["canaryWeight"] in (0, 50)
        assert _ready(canary)["status"] == "True"
        promoted = _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o.get("status", {}).get("stableVersion") == "v2", "v2 promoted", 180,
        )  # fmt: skip
    assert promoted["status"]["phase"] == "Available"
    assert promoted["status"].get("canaryVersion") is None
    expected = {"RolloutStarted", "CanaryStep", "Promoted", "WorkloadReplaced"}
    wait_for_events(
        core, namespace, "digits", lambda events: expected <= {e.reason for e in events},
        "events for the rollout's steps and the replaced Deployment",
    )  # fmt: skip
    metrics = operator.metrics()
    assert 'mlops_rollouts_started_total{namespace="' + namespace + '"} 1.0' in metrics
    assert 'mlops_rollouts_promoted_total{namespace="' + namespace + '"} 1.0' in metrics


def _leftover_deployment(idep: dict[str, Any]) -> dict[str, Any]:
    meta = idep["metadata"]
    labels = {
        "app.kubernetes.io/managed-by": "mlops-operator",
        "app.kubernetes.io/name": "inferencedeployment",
        "mlops.dev/inferencedeployment-uid": meta["uid"],
    }
    owner = {
        "apiVersion": f"{G}/{V}",
        "kind": "InferenceDeployment",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
    }
    pod = {"containers": [{"name": "triton", "image": "nvcr.io/nvidia/tritonserver:24.10-py3"}]}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "digits-triton", "labels": labels, "ownerReferences": [owner]},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"mlops.dev/inferencedeployment-uid": meta["uid"]}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _try_infer(url: str, batch: np.ndarray) -> list[np.ndarray] | None:
    try:
        return [_infer(url, batch)]
    except OSError:
        return None


def _serve_v1(
    custom: client.CustomObjectsApi, namespace: str, engine: CompiledEngine, **spec: Any
) -> dict[str, Any]:
    _ready_version(custom, namespace, "v1", engine)
    custom.create_namespaced_custom_object(G, V, namespace, "inferencedeployments", _idep("v1", **spec))
    return _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("phase") == "Available", "v1 Available",
    )  # fmt: skip


def _point_at(custom: client.CustomObjectsApi, namespace: str, version: str, **spec: Any) -> None:
    patch = {"spec": {"modelVersionRef": {"name": version}, **spec}}
    custom.patch_namespaced_custom_object(G, V, namespace, "inferencedeployments", "digits", patch)


def test_a_breaching_canary_is_aborted_and_a_newer_version_starts_a_new_canary(
    serving: tuple[OperatorProcess, LocalPodRunner],
    engine: CompiledEngine,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    operator, runner = serving
    _serve_v1(custom, namespace, engine)
    _ready_version(custom, namespace, "v2", engine)
    _ready_version(custom, namespace, "v3", engine)
    strict = {
        "rollout": {"analysis": {"successRateMin": 0.9, "latencyP95MaxMs": 0.001, "intervalSeconds": 10}}
    }
    with Traffic(runner):
        # The canary's real p95 latency (measured by the real Prometheus from the real server) is far
        # above 1 µs: the analysis fails, the rollout aborts, v1 keeps serving.
        _point_at(custom, namespace, "v2", **strict)
        degraded = _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o.get("status", {}).get("phase") == "Degraded", "the canary of v2 aborted", 180,
        )  # fmt: skip
        ready = _ready(degraded)
        assert (ready["status"], ready["reason"]) == ("False", "AnalysisFailed")
        assert "latency-p95-ms" in ready["message"]
        assert "v1 keeps 100%" in ready["message"]
        assert degraded["status"]["stableVersion"] == "v1"
        assert degraded["status"]["canaryVersion"] == "v2"
        wait_for_events(
            core, namespace, "digits",
            lambda events: any(e.reason == "AnalysisFailed" and e.type == "Warning" for e in events),
            "the AnalysisFailed Warning event",
        )  # fmt: skip
        assert 'mlops_rollouts_aborted_total{namespace="' + namespace + '"} 1.0' in operator.metrics()

        # A newer version after the abort: a new canary, without `kubectl argo rollouts retry`.
        relaxed = {
            "rollout": {"analysis": {"successRateMin": 0.9, "latencyP95MaxMs": 1000, "intervalSeconds": 10}}
        }
        _point_at(custom, namespace, "v3", **relaxed)
        _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o.get("status", {}).get("canaryVersion") == "v3" and o["status"]["phase"] != "Degraded",
            "a new canary of v3",
        )  # fmt: skip
        promoted = _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o.get("status", {}).get("stableVersion") == "v3", "v3 promoted", 180,
        )  # fmt: skip
    assert promoted["status"]["phase"] == "Available"


def test_recreate_is_a_deployment_whose_autoscaled_replicas_a_waiting_then_ready_version_keeps(
    serving: tuple[OperatorProcess, LocalPodRunner],
    engine: CompiledEngine,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    _, runner = serving
    apps = client.AppsV1Api(core.api_client)
    autoscaling = client.AutoscalingV2Api(core.api_client)
    scaled = {
        "rollout": {"strategy": "recreate"},
        "replicas": 1,
        "resources": {"gpus": 0, "cpu": "1"},
        "autoscaling": {"minReplicas": 2, "maxReplicas": 3},
    }
    # First on nodes that do not exist: the real scheduler's verdict reaches Ready (a serving pod's
    # change wakes its InferenceDeployment), then a fixed spec starts it.
    _ready_version(custom, namespace, "v1", engine)
    nowhere = {"scheduling": {"nodeSelector": {"mlops.dev/pool": "nowhere"}}}
    custom.create_namespaced_custom_object(
        G, V, namespace, "inferencedeployments", _idep("v1", **scaled, **nowhere)
    )
    stuck = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: _ready(o).get("reason") == "Unschedulable", "Ready=False Unschedulable",
    )  # fmt: skip
    assert "node" in _ready(stuck)["message"]
    _point_at(custom, namespace, "v1", scheduling={"nodeSelector": None})
    available = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("phase") == "Available", "v1 Available",
    )  # fmt: skip
    assert available["status"]["workloadKind"] == "Deployment"
    deployment = apps.read_namespaced_deployment("digits-triton", namespace)
    assert deployment.spec.strategy.type == "Recreate"
    assert deployment.spec.replicas == 2  # autoscaled: created at the minimum
    assert available["status"]["autoscaler"] == "digits-triton"
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler("digits-triton", namespace)
    assert (hpa.spec.scale_target_ref.kind, hpa.spec.scale_target_ref.name) == ("Deployment", "digits-triton")
    assert (hpa.spec.min_replicas, hpa.spec.max_replicas) == (2, 3)
    assert hpa.spec.metrics[0].resource.name == "cpu"
    url = wait_for(lambda: next(iter(runner.endpoints.values()), None), "a serving pod's server", 60)
    (answer,) = wait_for(lambda: _try_infer(url, np.zeros((1, 1, 8, 8), np.float32)), "Triton to answer", 60)
    assert answer.shape == (1, 10)

    # The autoscaler scales out (here by hand, through the scale subresource as the HPA controller
    # writes it: this control plane has no metrics server to drive it).
    apps.patch_namespaced_deployment_scale(
        "digits-triton", namespace, {"spec": {"replicas": 3}}, field_manager="horizontal-pod-autoscaler"
    )
    _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("readyReplicas") == 3, "3 ready replicas",
    )  # fmt: skip

    # A version that is not Ready yet waits while v1 serves...
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _modelversion("later", engine))
    _point_at(custom, namespace, "later")
    waiting = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: _ready(o, "CanaryWaiting").get("status") == "True", "CanaryWaiting while later compiles",
    )  # fmt: skip
    assert _ready(waiting, "CanaryWaiting")["reason"] == "ModelVersionNotReady"
    assert _ready(waiting)["status"] == "True"  # v1 still serves
    assert waiting["status"]["stableVersion"] == "v1"
    # ...and rolls out by itself once Ready (the ModelVersion's change wakes the deployment), on the
    # replicas the autoscaler chose.
    _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("stableVersion") == "later" and o["status"]["phase"] == "Available",
        "later rolled out", 180,
    )  # fmt: skip
    assert apps.read_namespaced_deployment("digits-triton", namespace).spec.replicas == 3

    # Autoscaling removed: the autoscaler goes and spec.replicas sizes the workload again.
    _point_at(custom, namespace, "later", autoscaling=None, replicas=1)
    _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: "autoscaler" not in o.get("status", {}) and o["status"].get("replicas") == 1,
        "one replica, no autoscaler",
    )  # fmt: skip
    assert not autoscaling.list_namespaced_horizontal_pod_autoscaler(namespace).items

    custom.delete_namespaced_custom_object(G, V, namespace, "inferencedeployments", "digits")

    def children_gone() -> bool:
        return not apps.list_namespaced_deployment(namespace).items and not [
            s for s in core.list_namespaced_service(namespace).items if s.metadata.name.startswith("digits-")
        ]

    wait_for(children_gone, "the Deployment and Services to be garbage-collected", 60)
