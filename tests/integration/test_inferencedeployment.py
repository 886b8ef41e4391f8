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
from mlops_operator.dev.s3 import LocalS3
from tests.integration.conftest import OperatorProcess, create_s3_secret, start_operator
from tests.integration.digits_engine import TRAINER, CompiledEngine, create_digits_dataset
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
    create_digits_dataset(custom, s3, engine, namespace)
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
    output = _answer(url, batch)["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def _answer(url: str, batch: np.ndarray) -> dict[str, Any]:
    """Triton's whole JSON response (`model_version` says which version answered)."""
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
        return json.loads(response.read())  # type: ignore[no-any-return]


def _versions_answering(runner: LocalPodRunner) -> set[str]:
    """The Triton versions the serving pods' servers answer with (a server still starting: none)."""
    found = set()
    for url in list(runner.endpoints.values()):
        with contextlib.suppress(OSError):
            found.add(_answer(url, np.zeros((1, 1, 8, 8), np.float32))["model_version"])
    return found


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
    assert status["repository"]["tritonVersion"] == 1  # no registry: Triton's version 1
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
    assert _answer(url, batch)["model_version"] == "1"

    # v2: a canary, analysed on live traffic by the real Prometheus, then promoted.
    _ready_version(custom, namespace, "v2", engine)
    # Triton's version of v2, as registration writes it (MLflow's version 2; this test runs no
    # registry, test_registry_serving_aliases.py does): its pods answer as 2 while v1's answer as 1.
    custom.patch_namespaced_custom_object_status(
        G, V, namespace, "modelversions", "v2", {"status": {"servingVersion": 2}}
    )
    with Traffic(runner):
        custom.patch_namespaced_custom_object(
            G, V, namespace, "inferencedeployments", "digits", {"spec": {"modelVersionRef": {"name": "v2"}}}
        )
        canary = _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o.get("status", {}).get("canaryVersion") == "v2", "the canary of v2",
        )  # fmt: skip
        assert canary["status"]["stableVersion"] == "v1"
        assert 0 <= canary["status"]["canaryWeight"] <= 50  # the real share of ready pods, up to the step's
        assert _ready(canary)["status"] == "True"
        assert canary["status"]["repository"]["tritonVersion"] == 2
        # The stable pods and the canary's side by side, each answering with its own version.
        wait_for(lambda: _versions_answering(runner) == {"1", "2"}, "v1's pods as 1, v2's as 2", 90)
        promoted = _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o.get("status", {}).get("stableVersion") == "v2", "v2 promoted", 180,
        )  # fmt: skip
    assert promoted["status"]["phase"] == "Available"
    assert promoted["status"].get("canaryVersion") is None
    assert promoted["status"]["repository"]["tritonVersion"] == 2
    wait_for(lambda: _versions_answering(runner) == {"2"}, "only v2's pods answering, as 2", 90)
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


# -- issue 15: children put back, nothing claimed that was not observed ----------------------------------

ROLLOUTS = ("argoproj.io", "v1alpha1")
OPERATOR_MANAGER = "mlops-operator"


def _rollout(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(*ROLLOUTS, namespace, "rollouts", "digits-triton")  # type: ignore[no-any-return]


def _fields_of(obj: Any, manager: str) -> dict[str, Any]:
    """The fieldsV1 `manager` owns in `obj` (a client model or a dict), merged over its entries."""
    entries = obj["metadata"].get("managedFields") if isinstance(obj, dict) else obj.metadata.managed_fields
    owned: dict[str, Any] = {}
    for each in entries or []:
        entry = each if isinstance(each, dict) else each.to_dict()
        if entry["manager"] == manager:
            owned |= entry.get("fieldsV1") or entry.get("fields_v1") or {}
    return owned


def test_children_deleted_or_edited_by_hand_are_put_back_with_only_the_operators_fields(
    serving: tuple[OperatorProcess, LocalPodRunner],
    engine: CompiledEngine,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    autoscaling = client.AutoscalingV2Api(core.api_client)
    _serve_v1(
        custom, namespace, engine,
        autoscaling={"minReplicas": 2, "maxReplicas": 3}, resources={"gpus": 0, "cpu": "1"},
    )  # fmt: skip

    def events_with(reason: str, name: str) -> None:
        wait_for_events(
            core, namespace, "digits",
            lambda events: any(e.reason == reason and name in e.message for e in events),
            f"a {reason} event for {name}", 60,
        )  # fmt: skip

    healed: dict[str, float] = {}

    def put_back(read: Any, uid: str, what: str) -> Any:
        def probe() -> Any:
            try:
                obj = read()
            except client.ApiException as error:
                if error.status == 404:
                    return None
                raise
            meta = obj["metadata"] if isinstance(obj, dict) else obj.metadata
            new_uid = meta["uid"] if isinstance(obj, dict) else meta.uid
            return obj if new_uid != uid else None

        started = time.monotonic()
        found = wait_for(probe, f"{what} created again", 60, interval=0.2)
        healed[what] = round(time.monotonic() - started, 1)
        return found

    # Who owns what: the operator's apply owns the endpoint Service's selector and ports; Argo
    # Rollouts owns none of its fields (the Rollout names no Service); the operator never took the
    # Rollout's replicas, which the autoscaler hand-over manager holds.
    service = core.read_namespaced_service("digits-triton", namespace)
    mine = _fields_of(service, OPERATOR_MANAGER)
    assert "f:selector" in mine["f:spec"]
    assert "f:ports" in mine["f:spec"]
    managers = {e.manager for e in service.metadata.managed_fields}
    assert not any("rollouts" in m for m in managers), managers
    rollout = _rollout(custom, namespace)
    assert "f:replicas" not in _fields_of(rollout, OPERATOR_MANAGER).get("f:spec", {})

    # The endpoint Service deleted by hand: created again, the endpoint works again.
    core.delete_namespaced_service("digits-triton", namespace)
    service = put_back(
        lambda: core.read_namespaced_service("digits-triton", namespace), service.metadata.uid, "the Service"
    )
    events_with("ChildRecreated", "Service digits-triton")
    # An operator-owned field edited by hand (the HTTP port's target, by another field manager):
    # reverted.
    edit = [{"op": "replace", "path": "/spec/ports/0/targetPort", "value": "grpc"}]
    core.patch_namespaced_service("digits-triton", namespace, edit, field_manager="a-colleague")

    def port_back() -> bool:
        ports = core.read_namespaced_service("digits-triton", namespace).spec.ports
        return {p.name: p.target_port for p in ports}.get("http") == "http"

    wait_for(port_back, "the Service's HTTP targetPort reverted", 60)
    events_with("ChildReverted", "Service digits-triton")

    # The AnalysisTemplate and the autoscaler, deleted: created again.
    template = custom.get_namespaced_custom_object(
        *ROLLOUTS, namespace, "analysistemplates", "digits-analysis"
    )
    custom.delete_namespaced_custom_object(*ROLLOUTS, namespace, "analysistemplates", "digits-analysis")
    put_back(
        lambda: custom.get_namespaced_custom_object(
            *ROLLOUTS, namespace, "analysistemplates", "digits-analysis"
        ),
        template["metadata"]["uid"], "the AnalysisTemplate",
    )  # fmt: skip
    hpa = autoscaling.read_namespaced_horizontal_pod_autoscaler("digits-triton", namespace)
    autoscaling.delete_namespaced_horizontal_pod_autoscaler("digits-triton", namespace)
    put_back(
        lambda: autoscaling.read_namespaced_horizontal_pod_autoscaler("digits-triton", namespace),
        hpa.metadata.uid, "the HorizontalPodAutoscaler",
    )  # fmt: skip

    # The Rollout itself, deleted (its pods go with it): created again; status never says Available
    # for the pods that went, and is Available again once the new pods are ready.
    seen: list[tuple[str, str, int]] = []
    stop = threading.Event()

    def watch_status() -> None:
        while not stop.is_set():
            status = _get(custom, namespace, "inferencedeployments", "digits").get("status", {})
            seen.append(
                (status.get("phase"), _ready({"status": status}).get("status"), status.get("readyReplicas"))
            )
            time.sleep(0.3)

    watcher = threading.Thread(target=watch_status, daemon=True)
    watcher.start()
    try:
        custom.delete_namespaced_custom_object(*ROLLOUTS, namespace, "rollouts", "digits-triton")
        put_back(lambda: _rollout(custom, namespace), rollout["metadata"]["uid"], "the Rollout")
        events_with("ChildRecreated", "Rollout digits-triton")
        _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o["status"]["phase"] == "Available" and o["status"]["readyReplicas"] == 2
            and _rollout(custom, namespace)["metadata"]["uid"] != rollout["metadata"]["uid"],
            "Available again on the new Rollout", 120,
        )  # fmt: skip
    finally:
        stop.set()
        watcher.join(timeout=5)
    # Whenever Ready was True, at least the 2 required replicas were reported ready.
    assert all(
        ready_count is not None and ready_count >= 2 for _, ready, ready_count in seen if ready == "True"
    ), seen

    # While the spec names a version that cannot be rolled out (here: none of that name), what
    # serves keeps its children: a Service deleted meanwhile is created again.
    _point_at(custom, namespace, "v9")
    _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: _ready(o, "CanaryWaiting").get("reason") == "ModelVersionNotFound", "v9 waiting",
    )  # fmt: skip
    service = core.read_namespaced_service("digits-triton", namespace)
    core.delete_namespaced_service("digits-triton", namespace)
    put_back(
        lambda: core.read_namespaced_service("digits-triton", namespace), service.metadata.uid,
        "the Service, while the spec's version waits",
    )  # fmt: skip
    print(f"seconds from a hand deletion to the child created again: {healed}")  # pytest -s shows it
    assert all(seconds < 30 for seconds in healed.values()), healed


def _serving_pods(core: client.CoreV1Api, namespace: str) -> list[Any]:
    return [
        p
        for p in core.list_namespaced_pod(namespace, label_selector="mlops.dev/inferencedeployment-uid").items
        if p.metadata.deletion_timestamp is None
        and any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
    ]


def test_a_canary_aborted_by_hand_or_losing_its_modelversion_and_the_served_version_deleted(
    serving: tuple[OperatorProcess, LocalPodRunner],
    engine: CompiledEngine,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    paused = {"rollout": {"steps": [{"setWeight": 50}, {"pause": {}}]}}
    _serve_v1(custom, namespace, engine, **paused)
    _ready_version(custom, namespace, "v2", engine)
    _point_at(custom, namespace, "v2")
    # The canary holds at its pause; the weight is the real share of ready pods (1 of 2 here), not
    # 100% from a Rollout status that has not seen the new template.
    canary = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o["status"].get("phase") == "Paused" and o["status"].get("canaryWeight") == 50,
        "the canary of v2 paused at 50% of the ready pods",
    )  # fmt: skip
    assert (canary["status"]["canaryVersion"], canary["status"]["stableVersion"]) == ("v2", "v1")
    hashes = {p.metadata.labels["rollouts-pod-template-hash"] for p in _serving_pods(core, namespace)}
    assert len(hashes) == 2  # a stable and a canary pod, both ready
    stable_hash = _rollout(custom, namespace)["status"]["stableRS"]

    # A person aborts (`kubectl argo rollouts abort`: status.abort through the status subresource):
    # ManuallyAborted, not AnalysisFailed (no analysis ran).
    custom.patch_namespaced_custom_object_status(
        *ROLLOUTS, namespace, "rollouts", "digits-triton", {"status": {"abort": True}}
    )
    aborted = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: _ready(o).get("reason") == "ManuallyAborted", "ManuallyAborted",
    )  # fmt: skip
    assert aborted["status"]["phase"] == "Degraded"
    assert "kubectl argo rollouts abort" in _ready(aborted)["message"]
    # ...and retries it (`kubectl argo rollouts retry`): the canary holds at its pause again.
    custom.patch_namespaced_custom_object_status(
        *ROLLOUTS, namespace, "rollouts", "digits-triton", {"status": {"abort": False}}
    )
    _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o["status"].get("phase") == "Paused", "the canary paused again",
    )  # fmt: skip

    # The canary's ModelVersion deleted: the operator aborts the canary; v1 serves on and is Ready.
    custom.delete_namespaced_custom_object(G, V, namespace, "modelversions", "v2")
    withdrawn = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: _ready(o).get("reason") == "CanaryAborted", "the canary aborted by the operator",
    )  # fmt: skip
    assert _ready(withdrawn)["status"] == "True"
    assert "v1 keeps 100%" in _ready(withdrawn)["message"]
    waiting = _ready(withdrawn, "CanaryWaiting")
    assert (waiting["status"], waiting["reason"]) in (
        ("True", "ModelVersionDeleting"),
        ("True", "ModelVersionNotFound"),
    )
    assert _rollout(custom, namespace)["status"].get("abort") is True
    wait_for(
        lambda: {p.metadata.labels["rollouts-pod-template-hash"] for p in _serving_pods(core, namespace)}
        == {stable_hash} and len(_serving_pods(core, namespace)) == 2,
        "v1 back on both pods, the canary's gone", 90,
    )  # fmt: skip
    assert _rollout(custom, namespace)["status"]["stableRS"] == stable_hash  # never promoted
    wait_for_events(
        core, namespace, "digits",
        lambda events: any(e.type == "Warning" and "aborted the canary of v2" in e.message for e in events),
        "the Warning event of the operator's abort",
    )  # fmt: skip

    # The version that serves 100% deleted: it serves on (the in-use finalizer keeps it while it
    # serves), and Ready says so, with a Warning event.
    _point_at(custom, namespace, "v1")
    _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o["status"].get("phase") == "Available" and o["metadata"]["generation"] == o["status"].get(
            "observedGeneration"
        ),
        "v1 alone again",
    )  # fmt: skip
    custom.delete_namespaced_custom_object(G, V, namespace, "modelversions", "v1")
    gone = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: _ready(o).get("reason") in ("ModelVersionDeleting", "ModelVersionDeleted"),
        "Ready saying the served ModelVersion is going",
    )  # fmt: skip
    assert _ready(gone)["status"] == "True"
    assert "which serves" in _ready(gone)["message"]
    wait_for_events(
        core, namespace, "digits",
        lambda events: any(e.reason == "ServedModelVersionGone" and e.type == "Warning" for e in events),
        "the ServedModelVersionGone Warning",
    )  # fmt: skip
    # CanaryWaiting turned False when v1 alone served again: good news, no (Warning) event.
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=digits").items
    assert not [e for e in events if e.reason == "NothingWaiting"]


def test_a_recreate_whose_new_pods_cannot_run_is_not_ready(
    serving: tuple[OperatorProcess, LocalPodRunner],
    engine: CompiledEngine,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    recreate = {"rollout": {"strategy": "recreate"}}
    _serve_v1(custom, namespace, engine, **recreate)
    # A new pod template whose pods no node can take: Recreate stops the old pods first, so nothing
    # serves. Not Ready, whatever served before.
    _point_at(custom, namespace, "v1", scheduling={"nodeSelector": {"mlops.dev/pool": "nowhere"}})
    outage = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: _ready(o).get("status") == "False" and o["status"].get("readyReplicas") == 0,
        "Ready=False with no ready replica",
    )  # fmt: skip
    ready = _ready(outage)
    assert ready["reason"] in ("Unschedulable", "InsufficientReplicas"), ready
    assert "0/" in ready["message"]
    assert "2 required" in ready["message"]
    assert outage["status"]["observedGeneration"] == outage["metadata"]["generation"]  # applied
    _point_at(custom, namespace, "v1", scheduling={"nodeSelector": None})
    back = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o["status"].get("phase") == "Available", "Available again",
    )  # fmt: skip
    assert _ready(back)["status"] == "True"
    assert back["status"]["readyReplicas"] == 2


def test_an_analysis_that_cannot_measure_is_metrics_unavailable_not_a_failed_model(
    serving: tuple[OperatorProcess, LocalPodRunner],
    engine: CompiledEngine,
    control_plane: ControlPlane,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    _serve_v1(custom, namespace, engine)
    _ready_version(custom, namespace, "v2", engine)
    no_tolerance = {"analysis": {"intervalSeconds": 10, "initialDelaySeconds": 0, "consecutiveErrorLimit": 0}}
    control_plane.stop_prometheus()
    try:
        _point_at(custom, namespace, "v2", rollout=no_tolerance)
        degraded = _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o["status"].get("phase") == "Degraded", "the canary aborted, unmeasured", 180,
        )  # fmt: skip
    finally:
        control_plane.start_prometheus()
    ready = _ready(degraded)
    assert (ready["status"], ready["reason"]) == ("False", "MetricsUnavailable"), ready
    assert "could not be measured" in ready["message"]
    assert "v1 keeps 100%" in ready["message"]
    assert "= None" not in ready["message"]  # the provider's message, not a value that was never measured


def test_without_argo_rollouts_a_deployment_stands_in_and_says_so(
    serving: tuple[OperatorProcess, LocalPodRunner],
    engine: CompiledEngine,
    control_plane: ControlPlane,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    _serve_v1(custom, namespace, engine)
    try:
        control_plane.uninstall_argo_rollouts()
        fallback = _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o["status"].get("workloadKind") == "Deployment" and _ready(o).get("status") == "True",
            "a Deployment serving v1 in place of the Rollout",
        )  # fmt: skip
        ready = _ready(fallback)
        assert ready["reason"] == "WorkloadFallback", ready
        assert "Argo Rollouts is not installed" in ready["message"]
        assert fallback["status"]["readyReplicas"] >= 2
        wait_for_events(
            core, namespace, "digits",
            lambda events: any(e.reason == "RolloutsUnavailable" and e.type == "Warning" for e in events),
            "the RolloutsUnavailable Warning",
        )  # fmt: skip
    finally:
        control_plane.restore()
    back = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o["status"].get("workloadKind") == "Rollout" and o["status"].get("phase") == "Available",
        "the Rollout serving again", 120,
    )  # fmt: skip
    assert _ready(back)["reason"] == "Available"
    apps = client.AppsV1Api(core.api_client)
    wait_for(lambda: not apps.list_namespaced_deployment(namespace).items, "the Deployment retired", 60)
