"""ModelVersion controller end to end: real apiserver, kwok GPU nodes, moto S3, a real MLflow server,
the operator process.

The compile and evaluate pods' fates are decided the way a kubelet would report them
(mlops_operator.dev.pods), with the trainer's JSON summary as the termination message; the real
trainer compiling and evaluating a really trained model is test_modelversion_real.py.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kubernetes import client
from mlflow import MlflowClient

from mlops_operator.dev.controlplane import ControlPlane, GpuNodePool, gpu_node_manifest
from mlops_operator.dev.mlflow import LocalMlflow
from mlops_operator.dev.pods import finish_pod
from mlops_operator.dev.s3 import LOOPBACK_ENDPOINTS, LocalS3
from mlops_operator.integrations.registry import RegistryTarget, VersionRequest, open_registry
from tests.integration.conftest import OperatorProcess, start_operator
from tests.integration.digits_engine import HYPERPARAMETERS, CompiledEngine
from tests.integration.mlflow_models import load_as_a_user, reference
from tests.waiting import wait_for, wait_for_events

G, V = "mlops.dev", "v1alpha1"
SCHEMA = "mlops.dev/trainer-result/v1"
REGISTRY_ENV = {"MLOPS_REGISTRY_ENDPOINT_ALLOWLIST": json.dumps(LOOPBACK_ENDPOINTS)}


def _summary(command: str, **fields: Any) -> str:
    base = {
        "schema": SCHEMA,
        "command": command,
        "status": "Succeeded",
        "retryable": False,
        "exitCode": 0,
        "reason": "Succeeded",
        "message": "",
    }
    return json.dumps({**base, **fields})


def compiled(engine_uri: str = "s3://b/e/model.onnx", **engine: Any) -> str:
    return _summary(
        "compile",
        artifacts={"engine": engine_uri, "metadata": engine_uri.rsplit("/", 1)[0] + "/metadata.json"},
        engine={
            "format": "onnx",
            "precision": "fp32",
            "tensorrtVersion": None,
            "gpu": None,
            "sizeBytes": 4321,
        }
        | engine,
    )


def evaluated(**metrics: float) -> str:
    values = {"accuracy": 0.97, "latency_p50_ms": 0.4, "latency_p95_ms": 0.6, "size_mb": 0.004} | metrics
    return _summary(
        "evaluate",
        metrics=values,
        evaluation={
            "format": "onnx",
            "runtime": "onnxruntime 1.32.0 (CPUExecutionProvider)",
            "split": "test",
        },
    )


@pytest.fixture
def registry_operator(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Any:
    running = start_operator(control_plane, namespace, tmp_path / "operator.log", REGISTRY_ENV)
    try:
        yield running
    finally:
        running.stop()


def _mv(name: str, source_uri: str, mlflow: LocalMlflow | None = None, **spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "modelName": "digits",
        "source": {"artifactURI": source_uri},
        "evaluation": {"datasetRef": {"name": "digits"}},
        "compile": {"target": "onnx", "precision": "fp32", "maxBatchSize": 8},
        "gates": {"metrics": [{"name": "accuracy", "op": ">=", "threshold": 0.9}], "maxLatencyP95Ms": 50},
    }
    if mlflow is not None:
        base["registry"] = {"provider": "mlflow", "project": "digits", "trackingURI": mlflow.tracking_uri}
    return {"apiVersion": f"{G}/{V}", "kind": "ModelVersion", "metadata": {"name": name}, "spec": base | spec}


def _get(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, namespace, "modelversions", name)  # type: ignore[no-any-return]


def _condition(obj: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def _wait(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    phase: str,
    reason: str | None = None,
    timeout: float = 60,
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = _get(custom, namespace, name)
        if obj.get("status", {}).get("phase") != phase:
            return None
        return obj if reason is None or _condition(obj).get("reason") == reason else None

    try:
        return wait_for(probe, f"ModelVersion {name} to reach {phase} {reason or ''}", timeout)
    except AssertionError as error:
        status = _get(custom, namespace, name).get("status")
        raise AssertionError(f"{error}\nstatus: {json.dumps(status, indent=1)}") from None


def _finish_stage(core: client.CoreV1Api, namespace: str, job: str, message: str, exit_code: int = 0) -> None:
    def running() -> str | None:
        pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        return next((p.metadata.name for p in pods if p.status.phase == "Running"), None)

    finish_pod(core, namespace, wait_for(running, f"a running pod of Job {job}", 60), exit_code, message)


def _to_ready(
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    body: dict[str, Any],
    engine_uri: str = "s3://b/e/model.onnx",
    **metrics: float,
) -> dict[str, Any]:
    """Through compile and evaluate to Ready; a registered version needs the real `engine_uri`
    (the fixture), whose records registration reads."""
    name = body["metadata"]["name"]
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    _finish_stage(core, namespace, f"{name}-compile-a1", compiled(engine_uri))
    _finish_stage(core, namespace, f"{name}-evaluate-a1", evaluated(**metrics))
    return _wait(custom, namespace, name, "Ready")


def _versions(mlflow: LocalMlflow, uid: str) -> list[Any]:
    found = MlflowClient(mlflow.tracking_uri).search_model_versions(f"tags.`mlops.dev/uid` = '{uid}'")
    return list(found)


def _model_name() -> str:
    return f"digits-{uuid.uuid4().hex[:8]}"


def test_compile_evaluate_gates_and_registration_with_lineage(
    registry_operator: OperatorProcess,
    mlflow_server: LocalMlflow,
    source: str,
    engine_uri: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    engine: CompiledEngine,
    tmp_path: Path,
):
    model = _model_name()
    body = _mv("mv1", source, mlflow_server, registry={
        "provider": "mlflow", "project": "digits", "trackingURI": mlflow_server.tracking_uri,
        "collection": model, "aliases": ["candidate"],
    })  # fmt: skip
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    compiling = _wait(custom, namespace, "mv1", "Compiling")
    status = compiling["status"]
    assert status["jobName"] == "mv1-compile-a1"
    assert status["lineage"]["sourceURI"] == source
    assert status["pinned"]["engineURI"].startswith(source + "compiled/mv1-")
    job = client.BatchV1Api(core.api_client).read_namespaced_job("mv1-compile-a1", namespace)
    assert job.metadata.owner_references[0].kind == "ModelVersion"
    assert job.spec.template.spec.containers[0].args == ["compile"]
    assert job.spec.template.spec.automount_service_account_token is False
    env = {e.name: e for e in job.spec.template.spec.containers[0].env}
    assert env["MLOPS_MODEL_URI"].value == source
    assert env["AWS_SECRET_ACCESS_KEY"].value_from.secret_key_ref.name == "s3-credentials"

    _finish_stage(core, namespace, "mv1-compile-a1", compiled(engine_uri))
    evaluating = _wait(custom, namespace, "mv1", "Evaluating")["status"]
    assert evaluating["engine"]["uri"] == engine_uri
    assert evaluating["engine"]["sizeBytes"] == 4321
    _finish_stage(core, namespace, "mv1-evaluate-a1", evaluated(accuracy=0.975))
    ready = _wait(custom, namespace, "mv1", "Ready")
    status = ready["status"]
    assert _condition(ready)["status"] == "True"
    assert status["metrics"]["accuracy"] == 0.975
    assert [(g["name"], g["passed"], g["observed"], g["threshold"]) for g in status["gates"]] == [
        ("accuracy", True, 0.975, 0.9),
        ("maxLatencyP95Ms", True, 0.6, 50.0),
    ]
    registry = status["registry"]
    assert registry["provider"] == "mlflow"
    assert registry["version"] == "1"
    assert status["servingVersion"] == 1  # Triton serves it as the registry's version
    assert registry["aliases"] == ["candidate", "staging"]  # the spec's, and the stage's
    assert ready["metadata"]["finalizers"] == ["mlops.dev/registry"]

    # Read back from the real server: one version, its lineage and UID as tags, the aliases.
    (version,) = _versions(mlflow_server, ready["metadata"]["uid"])
    assert version.name == model
    assert version.version == "1"
    # The version is the MLflow Model a run logged, with the run's params and the evaluation's metrics.
    assert version.source.startswith("models:/m-")
    assert version.tags["mlops.dev/modelversion"] == "mv1"
    assert version.tags["mlops.dev/namespace"] == namespace
    assert version.tags["mlops.dev/source-uri"] == source
    assert version.tags["mlops.dev/dataset"] == "digits"
    # (search results carry no aliases: read the version itself)
    mlflow = MlflowClient(mlflow_server.tracking_uri)
    read = mlflow.get_model_version(model, "1")
    assert sorted(read.aliases) == ["candidate", "staging"]
    assert read.description.startswith(
        f"Imported from {source}, evaluated on Dataset digits; compiled to onnx fp32, accuracy 0.975."
    )
    assert f"ModelVersion {namespace}/mv1" in read.description
    run = mlflow.get_run(read.run_id)
    assert mlflow.get_experiment(run.info.experiment_id).name == "digits"  # spec.registry.project
    assert run.info.run_name == f"{namespace}/mv1"
    assert run.data.metrics["accuracy"] == 0.975
    assert run.data.params["epochs"] == str(HYPERPARAMETERS["epochs"])  # what the trainer ran with
    assert run.data.params["compile.target"] == "onnx"
    # A data scientist loads it by alias with MLflow's own client; it answers as ONNX Runtime does.
    inputs = np.random.default_rng(11).random((4, 1, 8, 8), dtype=np.float32)
    loaded = load_as_a_user(mlflow_server, f"models:/{model}@candidate", inputs, tmp_path)
    np.testing.assert_allclose(np.asarray(loaded["pyfunc"]), reference(engine.onnx, inputs), atol=1e-5)

    wait_for_events(
        core, namespace, "mv1",
        lambda events: {"Compiling", "Evaluating", "Registering", "Registered"} <= {e.reason for e in events},
        "an event for every stage",
    )  # fmt: skip
    metrics = registry_operator.metrics()
    assert 'mlops_modelversion_compile_seconds_count{target="onnx"} 1.0' in metrics
    assert 'mlops_objects{kind="ModelVersion",phase="Ready"} 1.0' in metrics

    # kubectl get shows the phase, the headline metric and the registry version.
    columns = [c["name"] for c in _crd_columns(custom.api_client)]
    assert columns[:7] == ["Phase", "Model", "Target", "Accuracy", "Registry Version", "Ready", "Age"]


def _crd_columns(api: client.ApiClient) -> list[dict[str, Any]]:
    crd = client.ApiextensionsV1Api(api).read_custom_resource_definition("modelversions.mlops.dev")
    return [c.to_dict() for c in crd.spec.versions[0].additional_printer_columns]


def test_a_failing_gate_rejects_and_registers_nothing(
    registry_operator: OperatorProcess,
    mlflow_server: LocalMlflow,
    source: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    body = _mv("weak", source, mlflow_server)
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    _finish_stage(core, namespace, "weak-compile-a1", compiled())
    _finish_stage(core, namespace, "weak-evaluate-a1", evaluated(accuracy=0.42, latency_p95_ms=75.5))
    rejected = _wait(custom, namespace, "weak", "Rejected")
    ready = _condition(rejected)
    assert (ready["status"], ready["reason"]) == ("False", "GateFailed")
    assert "accuracy" in ready["message"]
    assert "0.42" in ready["message"]
    assert "0.9" in ready["message"]
    assert "maxLatencyP95Ms" in ready["message"]
    assert "75.5" in ready["message"]
    gates = {g["name"]: g for g in rejected["status"]["gates"]}
    assert gates["accuracy"]["passed"] is False
    assert gates["accuracy"]["observed"] == 0.42
    assert gates["maxLatencyP95Ms"]["passed"] is False
    assert "registry" not in rejected["status"]
    assert _versions(mlflow_server, rejected["metadata"]["uid"]) == []
    wait_for_events(
        core, namespace, "weak",
        lambda events: any(e.reason == "GateFailed" and e.type == "Warning" for e in events),
        "the GateFailed Warning event",
    )  # fmt: skip
    assert 'mlops_modelversion_gate_failures_total{gate="accuracy"}' in registry_operator.metrics()


def test_a_gate_on_a_metric_the_evaluator_did_not_report_is_a_failure(
    operator: OperatorProcess,
    source: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    body = _mv("nof1", source, gates={"metrics": [{"name": "f1", "op": ">=", "threshold": 0.0}]})
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    _finish_stage(core, namespace, "nof1-compile-a1", compiled())
    _finish_stage(core, namespace, "nof1-evaluate-a1", evaluated())
    rejected = _wait(custom, namespace, "nof1", "Rejected")
    (gate,) = rejected["status"]["gates"]
    assert gate["passed"] is False
    assert "observed" not in gate
    assert "MetricMissing" in gate["message"]
    assert "MetricMissing" in _condition(rejected)["message"]


def test_without_a_registry_passing_gates_make_it_ready_and_a_compile_failure_is_classified(
    operator: OperatorProcess,
    source: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    ready = _to_ready(custom, core, namespace, _mv("plain", source))
    assert _condition(ready)["reason"] == "Accepted"
    assert "finalizers" not in ready["metadata"]

    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _mv("broken", source))
    failure = _summary(
        "compile", status="Failed", exitCode=3, reason="ModelCheckFailed", message="ONNX parity 0.3 > 1e-4"
    )
    _finish_stage(core, namespace, "broken-compile-a1", failure, exit_code=3)
    failed = _wait(custom, namespace, "broken", "Failed")
    assert _condition(failed)["reason"] == "ModelCheckFailed"
    assert failed["status"]["failures"][0]["stage"] == "compile"
    assert failed["status"]["failures"][0]["retryable"] is False


def test_waits_for_its_training_run_and_fails_with_it(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    body = _mv("from-run", "s3://unused/", source={"trainingRunRef": {"name": "r1"}}, evaluation={})
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    waiting = _wait(custom, namespace, "from-run", "WaitingForTraining")
    assert _condition(waiting)["reason"] == "TrainingRunNotFound"
    run = {
        "apiVersion": f"{G}/{V}",
        "kind": "TrainingRun",
        "metadata": {"name": "r1"},
        "spec": {
            "datasetRef": {"name": "digits"},
            "model": "digits-cnn",
            "resources": {"gpusPerWorker": 1},
            "output": {"uri": f"s3://{dataset}/models/r1/"},
            "retry": {"maxAttempts": 1},
        },
    }
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)

    def running() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "from-run")
        return obj if "is Running" in _condition(obj).get("message", "") else None

    waiting = wait_for(running, "the ModelVersion to name the run's phase", 60)
    assert _condition(waiting)["reason"] == "WaitingForTraining"
    bad = _summary(
        "train", status="Failed", exitCode=2, reason="InvalidConfig", message="bad hyperparameters"
    )
    _finish_stage(core, namespace, "r1-a1", bad, exit_code=2)
    failed = _wait(custom, namespace, "from-run", "Failed")
    assert _condition(failed)["reason"] == "TrainingFailed"
    assert "r1" in _condition(failed)["message"]
    assert (
        client.BatchV1Api(core.api_client)
        .list_namespaced_job(namespace, label_selector="mlops.dev/modelversion=from-run")
        .items
        == []
    )


def test_a_source_without_a_model_is_retried_until_it_appears(
    operator: OperatorProcess,
    s3: LocalS3,
    dataset: str,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    prefix = f"s3://{dataset}/models/later/"
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _mv("later", prefix))
    pending = _wait(custom, namespace, "later", "Pending", "SourceUnavailable")
    assert "model.onnx" in _condition(pending)["message"]
    for key in ("model.onnx", "metadata.json"):
        s3.client().put_object(Bucket=dataset, Key=f"models/later/{key}", Body=b"{}")
    _wait(custom, namespace, "later", "Compiling", timeout=30)


def test_registry_outage_is_retried_and_a_restart_mid_registration_makes_one_version(
    control_plane: ControlPlane,
    mlflow_server: LocalMlflow,
    source: str,
    engine_uri: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    model = _model_name()
    operator = start_operator(control_plane, namespace, tmp_path / "operator.log", REGISTRY_ENV)
    try:
        body = _mv("mv", source, mlflow_server)
        body["spec"]["registry"]["collection"] = model
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
        _finish_stage(core, namespace, "mv-compile-a1", compiled(engine_uri))
        mlflow_server.stop()
        _finish_stage(core, namespace, "mv-evaluate-a1", evaluated())
        down = _wait(custom, namespace, "mv", "Registering", "RegistryUnavailable")
        uid = down["metadata"]["uid"]
        wait_for_events(
            core, namespace, "mv",
            lambda events: any(e.reason == "RegistryUnavailable" and e.type == "Warning" for e in events),
            "the RegistryUnavailable Warning event",
        )  # fmt: skip
        # The operator dies; the registration it was making reached the registry (the response was
        # lost): the next operator must find it by the UID tag instead of making a second version.
        operator.process.send_signal(signal.SIGKILL)
        operator.process.wait()
        mlflow_server.start()
        registry = MlflowClient(mlflow_server.tracking_uri)
        registry.create_registered_model(model)
        registry.create_model_version(model, "s3://b/e/model.onnx", tags={"mlops.dev/uid": uid})
        operator = start_operator(control_plane, namespace, tmp_path / "operator.log", REGISTRY_ENV)
        ready = _wait(custom, namespace, "mv", "Ready", timeout=90)
        assert ready["status"]["registry"]["version"] == "1"
        assert len(_versions(mlflow_server, uid)) == 1
        assert len(list(registry.search_model_versions(f"name = '{model}'"))) == 1
    finally:
        operator.stop()
        mlflow_server.start()  # a no-op when it runs


def test_stage_and_alias_changes_move_aliases_without_a_new_job(
    registry_operator: OperatorProcess,
    mlflow_server: LocalMlflow,
    source: str,
    engine_uri: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    model = _model_name()

    def body(name: str) -> dict[str, Any]:
        mv = _mv(name, source, mlflow_server)
        mv["spec"]["registry"] |= {"collection": model, "aliases": ["champion"]}
        return mv

    v1 = _to_ready(custom, core, namespace, body("v1"), engine_uri)
    assert v1["status"]["registry"]["aliases"] == ["champion", "staging"]
    jobs_before = len(client.BatchV1Api(core.api_client).list_namespaced_job(namespace).items)

    # Promotion of v1: stage Production, a new alias; no new Job, no new registry version.
    custom.patch_namespaced_custom_object(
        G, V, namespace, "modelversions", "v1",
        {"spec": {"stage": "Production", "registry": {"aliases": ["champion", "blessed"]}}},
    )  # fmt: skip

    def promoted() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "v1")
        return obj if obj["status"]["registry"]["aliases"] == ["blessed", "champion", "production"] else None

    wait_for(promoted, "v1's aliases to follow its spec", 30)
    registry = MlflowClient(mlflow_server.tracking_uri)
    assert sorted(registry.get_model_version(model, "1").aliases) == ["blessed", "champion", "production"]
    assert len(client.BatchV1Api(core.api_client).list_namespaced_job(namespace).items) == jobs_before
    assert len(list(registry.search_model_versions(f"name = '{model}'"))) == 1

    # v2 takes champion (an alias points at one version at a time): v1's status shows it left.
    v2 = _to_ready(custom, core, namespace, body("v2"), engine_uri)
    assert v2["status"]["registry"]["version"] == "2"
    assert v2["status"]["servingVersion"] == 2  # Triton's version: models:/<name>/2 is what answers
    assert registry.get_model_version_by_alias(model, "champion").version == "2"

    def moved() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "v1")
        return obj if "champion" not in obj["status"]["registry"]["aliases"] else None

    v1 = wait_for(moved, "v1's status to show champion moved to v2", 30)
    assert v1["status"]["registry"]["aliases"] == ["blessed", "production"]
    wait_for_events(
        core,
        namespace,
        "v1",
        lambda events: any(e.reason == "AliasMoved" for e in events),
        "the AliasMoved event",
    )


def test_a_compile_relevant_change_after_start_is_refused(
    operator: OperatorProcess,
    source: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _mv("locked", source))
    _wait(custom, namespace, "locked", "Compiling")
    custom.patch_namespaced_custom_object(
        G, V, namespace, "modelversions", "locked", {"spec": {"compile": {"maxBatchSize": 64}}}
    )

    def refused() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "locked")
        return obj if _condition(obj, "SpecAccepted").get("reason") == "ImmutableAfterStart" else None

    wait_for(refused, "SpecAccepted=False", 30)
    _finish_stage(core, namespace, "locked-compile-a1", compiled())
    batch = client.BatchV1Api(core.api_client)

    def evaluate_job() -> Any:
        jobs = batch.list_namespaced_job(namespace, field_selector="metadata.name=locked-evaluate-a1").items
        return jobs[0] if jobs else None

    job = wait_for(evaluate_job, "the evaluate Job", 30)
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    assert env["MLOPS_EVAL_BATCH_SIZE"] == "8"  # built from the spec compile started with


@pytest.mark.parametrize("policy", ["Retain", "Archive"])
def test_deletion_policies(
    policy: str,
    registry_operator: OperatorProcess,
    mlflow_server: LocalMlflow,
    source: str,
    engine_uri: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    model = _model_name()
    body = _mv("gone", source, mlflow_server)
    body["spec"]["registry"] |= {"collection": model, "aliases": ["champion"], "deletionPolicy": policy}
    _to_ready(custom, core, namespace, body, engine_uri)
    custom.delete_namespaced_custom_object(G, V, namespace, "modelversions", "gone")

    def deleted() -> bool:
        try:
            _get(custom, namespace, "gone")
        except client.ApiException as error:
            return error.status == 404
        return False

    wait_for(deleted, "the ModelVersion to be deleted", 30)
    version = MlflowClient(mlflow_server.tracking_uri).get_model_version(model, "1")
    if policy == "Retain":
        assert sorted(version.aliases) == ["champion", "staging"]
        assert "mlops.dev/archived" not in version.tags
    else:
        assert version.aliases == []
        assert version.tags["mlops.dev/archived"] == "true"


def test_deletion_through_an_unreachable_registry_waits_and_says_how_to_force_it(
    registry_operator: OperatorProcess,
    mlflow_server: LocalMlflow,
    source: str,
    engine_uri: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    body = _mv("stuck", source, mlflow_server)
    body["spec"]["registry"] |= {"collection": _model_name(), "deletionPolicy": "Archive"}
    _to_ready(custom, core, namespace, body, engine_uri)
    mlflow_server.stop()
    try:
        custom.delete_namespaced_custom_object(G, V, namespace, "modelversions", "stuck")

        def waiting() -> dict[str, Any] | None:
            obj = _get(custom, namespace, "stuck")
            return obj if _condition(obj).get("reason") == "RegistryUnavailable" else None

        obj = wait_for(waiting, "deletion to wait for the registry", 30)
        assert "mlops.dev/skip-registry-cleanup=true" in _condition(obj)["message"]
        custom.patch_namespaced_custom_object(
            G, V, namespace, "modelversions", "stuck",
            {"metadata": {"annotations": {"mlops.dev/skip-registry-cleanup": "true"}}},
        )  # fmt: skip

        def deleted() -> bool:
            try:
                _get(custom, namespace, "stuck")
            except client.ApiException as error:
                return error.status == 404
            return False

        wait_for(deleted, "the annotated ModelVersion to be deleted", 30)
    finally:
        mlflow_server.start()


@pytest.fixture
def l4_node(control_plane: ControlPlane) -> Iterator[str]:
    """A simulated node with one more GPU product than the session's H100 nodes."""
    pool = GpuNodePool(count=1, gpus_per_node=4, gpu_product="NVIDIA-L4", name_prefix="l4-node")
    control_plane.kubectl_apply([gpu_node_manifest(pool, 0)])
    try:
        yield "l4-node-0"
    finally:
        control_plane.kubectl("delete", "node", "l4-node-0", "--wait=false", check=False)


def test_tensorrt_stages_run_on_a_node_of_the_gpu_product(
    l4_node: str,
    operator: OperatorProcess,
    source: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    body = _mv("trt", source, compile={"target": "tensorrt", "precision": "fp16", "gpuProduct": "NVIDIA-L4"})
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    engine = compiled(
        "s3://b/e/model.plan",
        format="tensorrt",
        precision="fp16",
        tensorrtVersion="10.9.0",
        gpu="NVIDIA L4",
        computeCapability="8.9",
    )
    for stage, message in (("compile", engine), ("evaluate", evaluated())):
        job = f"trt-{stage}-a1"

        def scheduled(job: str = job) -> Any:
            pods = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
            return next((p for p in pods if p.spec.node_name), None)

        pod = wait_for(scheduled, f"the {stage} pod to be scheduled", 60)
        assert pod.spec.node_name == l4_node
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"
        _finish_stage(core, namespace, job, message)
    ready = _wait(custom, namespace, "trt", "Ready")
    engine_status = ready["status"]["engine"]
    assert engine_status["format"] == "tensorrt"
    assert engine_status["gpu"] == "NVIDIA L4"
    assert engine_status["gpuProduct"] == "NVIDIA-L4"
    assert engine_status["computeCapability"] == "8.9"
    assert engine_status["tensorrtVersion"] == "10.9.0"


def test_an_engine_built_for_another_gpu_is_not_served(
    l4_node: str,
    operator: OperatorProcess,
    source: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    body = _mv("l4", source, compile={"target": "tensorrt", "precision": "fp16"})
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    plan = compiled("s3://b/e/model.plan", format="tensorrt", gpu="NVIDIA L4", computeCapability="8.9")
    _finish_stage(core, namespace, "l4-compile-a1", plan)
    _finish_stage(core, namespace, "l4-evaluate-a1", evaluated())
    ready = _wait(custom, namespace, "l4", "Ready")
    assert ready["status"]["engine"]["gpuProduct"] == "NVIDIA-L4"  # as GPU Feature Discovery names it
    idep = {
        "apiVersion": f"{G}/{V}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "wrong-gpu"},
        "spec": {
            "modelVersionRef": {"name": "l4"},
            "resources": {"gpus": 1, "gpuProduct": "NVIDIA-A100-SXM4-80GB"},
        },
    }
    custom.create_namespaced_custom_object(G, V, namespace, "inferencedeployments", idep)

    def refused() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(G, V, namespace, "inferencedeployments", "wrong-gpu")
        return obj if _condition(obj).get("reason") == "EngineGPUMismatch" else None

    obj = wait_for(refused, "EngineGPUMismatch", 30)
    assert obj["status"]["phase"] == "Failed"
    assert "NVIDIA-L4" in _condition(obj)["message"]
    assert client.AppsV1Api(core.api_client).list_namespaced_deployment(namespace).items == []


def _gone(custom: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    try:
        _get(custom, namespace, name)
    except client.ApiException as error:
        return error.status == 404
    return False


def _jobs(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    batch = client.BatchV1Api(core.api_client)
    selector = f"app.kubernetes.io/instance={name}"
    return {j.metadata.name: j for j in batch.list_namespaced_job(namespace, label_selector=selector).items}


def test_a_delete_during_registration_archives_the_version_it_made_by_its_uid(
    control_plane: ControlPlane,
    mlflow_server: LocalMlflow,
    source: str,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    """The state a delete leaves when it lands while register() runs: the registry has the version
    (tagged with the object's UID, aliases on it), the status write that would have recorded it
    was refused (409), so status names no version; the registry finalizer is held. The operator
    then starts on the deleted object: the version must be archived, not left with its aliases."""
    model = _model_name()
    body = _mv("racing", source, mlflow_server)
    body["spec"]["registry"] |= {"collection": model, "aliases": ["champion"], "deletionPolicy": "Archive"}
    body["metadata"]["finalizers"] = ["mlops.dev/registry"]
    uid = custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)["metadata"]["uid"]
    custom.patch_namespaced_custom_object_status(
        G, V, namespace, "modelversions", "racing", {"status": {"phase": "Registering"}}
    )
    target = RegistryTarget(
        provider="mlflow", model_name=model, project="digits", tracking_uri=mlflow_server.tracking_uri
    )
    registry = open_registry(target)
    made = registry.register(VersionRequest(uid=uid, source_uri=f"{source}model.onnx", tags={}))
    registry.set_aliases(made.version, add=["champion", "staging"], remove=[])
    custom.delete_namespaced_custom_object(G, V, namespace, "modelversions", "racing")

    operator = start_operator(control_plane, namespace, tmp_path / "operator.log", REGISTRY_ENV)
    try:
        wait_for(lambda: _gone(custom, namespace, "racing"), "the ModelVersion to be deleted", 30)
    finally:
        operator.stop()
    version = MlflowClient(mlflow_server.tracking_uri).get_model_version(model, made.version)
    assert version.aliases == []
    assert version.tags["mlops.dev/archived"] == "true"


def test_a_stage_past_its_deadline_fails_and_finished_stage_jobs_are_deleted(
    control_plane: ControlPlane,
    source: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    operator = start_operator(
        control_plane, namespace, tmp_path / "operator.log", {"MLOPS_STAGE_DEADLINE_SECONDS": "6"}
    )
    try:
        # In time (the spec's deadline overrides the operator's): once Ready, no stage Job is left.
        quick = _mv("quick", source)
        quick["spec"]["compile"]["deadlineSeconds"] = 600
        quick["spec"]["evaluation"]["deadlineSeconds"] = 300
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", quick)
        _wait(custom, namespace, "quick", "Compiling")
        assert _jobs(core, namespace, "quick")["quick-compile-a1"].spec.active_deadline_seconds == 600
        _finish_stage(core, namespace, "quick-compile-a1", compiled())
        _wait(custom, namespace, "quick", "Evaluating")
        assert _jobs(core, namespace, "quick")["quick-evaluate-a1"].spec.active_deadline_seconds == 300
        _finish_stage(core, namespace, "quick-evaluate-a1", evaluated())
        _wait(custom, namespace, "quick", "Ready")
        wait_for(lambda: not _jobs(core, namespace, "quick"), "the finished stage Jobs to be deleted", 30)

        # A compile that hangs: stopped at the operator's deadline, not retried, its Job deleted.
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _mv("hung", source))
        _wait(custom, namespace, "hung", "Compiling")
        assert _jobs(core, namespace, "hung")["hung-compile-a1"].spec.active_deadline_seconds == 6
        started = _jobs(core, namespace, "hung")["hung-compile-a1"].status.start_time
        failed = _wait(custom, namespace, "hung", "Failed", "StageDeadlineExceeded", timeout=60)
        assert "ran past its deadline of 6s" in _condition(failed)["message"]
        # Said within seconds of the deadline (the Job controller stops it; the Job's change wakes it).
        took = (datetime.now(UTC) - started).total_seconds()
        print(f"StageDeadlineExceeded {took:.0f}s after the Job started (deadline 6s)")
        assert took <= 6 + 10
        (failure,) = failed["status"]["failures"]
        assert (failure["stage"], failure["reason"], failure["retryable"]) == (
            "compile",
            "StageDeadlineExceeded",
            False,
        )
        wait_for(lambda: not _jobs(core, namespace, "hung"), "the stopped compile Job to be deleted", 30)
    finally:
        operator.stop()
