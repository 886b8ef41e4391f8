"""A ModelVersion an InferenceDeployment serves is protected from deletion like a PVC a pod uses.

Real apiserver, kwok nodes, moto S3, the real trainer compiling and evaluating through the local pod
runner, the real tritonserver serving the InferenceDeployment's pod, the operator process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from mlflow import MlflowClient

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.mlflow import LocalMlflow
from mlops_operator.dev.runner import LocalPodRunner, ServingRuntime
from mlops_operator.dev.s3 import LOOPBACK_ENDPOINTS, LocalS3
from tests.integration.conftest import create_s3_secret, start_operator
from tests.integration.digits_engine import TRAINER, CompiledEngine, create_digits_dataset
from tests.integration.kube_objects import condition as _condition
from tests.integration.kube_objects import get_object as _get
from tests.integration.kube_objects import ready_model_version as _ready_version
from tests.integration.kube_objects import wait_object as _wait
from tests.waiting import wait_for, wait_for_events

G, V = "mlops.dev", "v1alpha1"
IN_USE = "mlops.dev/in-use"


@pytest.fixture
def served(
    control_plane: ControlPlane,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    s3: LocalS3,
    engine: CompiledEngine,
    namespace: str,
    tmp_path: Path,
) -> Iterator[None]:
    """The operator and the local pod runner (trainer Jobs, serving pods) on a `digits` Dataset."""
    create_s3_secret(core, namespace)
    create_digits_dataset(custom, s3, engine, namespace)
    operator = start_operator(
        control_plane,
        namespace,
        tmp_path / "operator.log",
        {
            "MLOPS_TRITON_CPU_BACKEND": "python",
            "MLOPS_PROMETHEUS_ADDRESS": control_plane.prometheus_url,
            "MLOPS_REGISTRY_ENDPOINT_ALLOWLIST": json.dumps(LOOPBACK_ENDPOINTS),
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
        yield
    finally:
        runner.stop()
        operator.stop()


def _gone(custom: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    try:
        _get(custom, namespace, "modelversions", name)
    except client.ApiException as error:
        return error.status == 404
    return False


def test_a_served_version_is_deleted_only_once_nothing_serves_it(
    served: None,
    engine: CompiledEngine,
    mlflow_server: LocalMlflow,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    model = f"digits-{namespace}"
    registry = {
        "provider": "mlflow",
        "project": "digits",
        "trackingURI": mlflow_server.tracking_uri,
        "collection": model,
        "aliases": ["champion"],
        "deletionPolicy": "Archive",
    }
    _ready_version(custom, namespace, "v1", engine, registry)
    idep = {
        "apiVersion": f"{G}/{V}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "digits"},
        "spec": {
            "modelVersionRef": {"name": "v1"},
            "replicas": 1,
            "resources": {"gpus": 0},
            "triton": {"maxBatchSize": 16},
            "rollout": {"strategy": "recreate"},
        },
    }
    custom.create_namespaced_custom_object(G, V, namespace, "inferencedeployments", idep)
    _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("stableVersion") == "v1", "v1 serving",
    )  # fmt: skip
    _wait(
        custom, namespace, "modelversions", "v1",
        lambda o: IN_USE in (o["metadata"].get("finalizers") or []), "the in-use finalizer on v1",
    )  # fmt: skip

    # Deleted while it serves: it stays, and says who keeps it.
    custom.delete_namespaced_custom_object(G, V, namespace, "modelversions", "v1")
    blocked = _wait(
        custom, namespace, "modelversions", "v1",
        lambda o: _condition(o, "InUse").get("status") == "True", "InUse=True",
    )  # fmt: skip
    assert _condition(blocked, "InUse")["reason"] == "ServedByInferenceDeployment"
    assert "InferenceDeployment digits (stable)" in _condition(blocked, "InUse")["message"]
    assert blocked["metadata"].get("deletionTimestamp")
    wait_for_events(
        core,
        namespace,
        "v1",
        lambda events: "DeletionBlocked" in {e.reason for e in events},
        "DeletionBlocked",
    )
    time.sleep(3)
    assert not _gone(custom, namespace, "v1")
    # ... and the registry keeps it as it was: what serves is not archived.
    mlflow = MlflowClient(mlflow_server.tracking_uri)
    assert sorted(mlflow.get_model_version(model, "1").aliases) == ["champion", "staging"]
    assert "mlops.dev/archived" not in mlflow.get_model_version(model, "1").tags

    # Once another version serves, it is released and goes; the new one is protected in its turn.
    _ready_version(custom, namespace, "v2", engine)
    custom.patch_namespaced_custom_object(
        G, V, namespace, "inferencedeployments", "digits", {"spec": {"modelVersionRef": {"name": "v2"}}}
    )
    wait_for(lambda: _gone(custom, namespace, "v1"), "v1 to be deleted once v2 serves", 180)
    assert (
        mlflow.get_model_version(model, "1").tags["mlops.dev/archived"] == "true"
    )  # released, then archived
    assert _get(custom, namespace, "inferencedeployments", "digits")["status"]["stableVersion"] == "v2"
    _wait(
        custom, namespace, "modelversions", "v2",
        lambda o: IN_USE in (o["metadata"].get("finalizers") or []), "the in-use finalizer on v2",
    )  # fmt: skip

    # The InferenceDeployment deleted: nothing serves v2 any more, its protection goes.
    custom.delete_namespaced_custom_object(G, V, namespace, "inferencedeployments", "digits")
    _wait(
        custom, namespace, "modelversions", "v2",
        lambda o: IN_USE not in (o["metadata"].get("finalizers") or []), "v2 released, its server gone", 60,
    )  # fmt: skip
