"""The registry says what serves (issue 17): an InferenceDeployment's `registryAliases` follow its
rollout through the real Argo Rollouts, as MLflow's own client reads them from the real MLflow server.

Real apiserver, kwok nodes, moto S3, the real trainer compiling and evaluating (local pod runner),
the real Argo Rollouts controller, the real MLflow tracking server, the operator process. kwok decides
when pods are Ready; without a traffic router the canary weight is the share of ready pods.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.mlflow import LocalMlflow
from mlops_operator.dev.runner import LocalPodRunner, ServingRuntime
from mlops_operator.dev.s3 import LOOPBACK_ENDPOINTS, LocalS3
from tests.integration.conftest import OperatorProcess, create_s3_secret, start_operator
from tests.integration.digits_engine import TRAINER, CompiledEngine, create_digits_dataset
from tests.integration.kube_objects import condition as _condition
from tests.integration.kube_objects import ready_model_version
from tests.integration.kube_objects import wait_object as _wait
from tests.waiting import wait_for, wait_for_events

G, V = "mlops.dev", "v1alpha1"
SYNCED = "RegistryAliasesSynced"

# How often the operator of these tests reads the serving aliases back from the registry.
ALIAS_CHECK_SECONDS = 15


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
) -> Iterator[OperatorProcess]:
    if not control_plane.argo_rollouts:
        pytest.fail("the session control plane must run Argo Rollouts (tests/integration/conftest.py)")
    create_s3_secret(core, namespace)
    create_digits_dataset(custom, s3, engine, namespace)
    operator = start_operator(
        control_plane,
        namespace,
        tmp_path / "operator.log",
        {
            "MLOPS_TRITON_CPU_BACKEND": "python",
            "MLOPS_REGISTRY_ENDPOINT_ALLOWLIST": json.dumps(LOOPBACK_ENDPOINTS),
            # The periodic read-back of the serving aliases, short enough for the test to see one.
            "MLOPS_REGISTRY_ALIAS_CHECK_SECONDS": str(ALIAS_CHECK_SECONDS),
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
        yield operator
    finally:
        runner.stop()
        operator.stop()


def _ready_version(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    engine: CompiledEngine,
    registry: dict[str, Any],
) -> str:
    """The ModelVersion compiled, evaluated and registered: its registry version."""
    ready = ready_model_version(custom, namespace, name, engine, registry)
    return str(ready["status"]["registry"]["version"])


def _alias(mlflow: MlflowClient, model: str, alias: str) -> str | None:
    """The version the alias names in MLflow, or None."""
    try:
        return str(mlflow.get_model_version_by_alias(model, alias).version)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(error).lower():
            return None
        raise


def _steps(pause: dict[str, Any]) -> dict[str, Any]:
    return {"rollout": {"steps": [{"setWeight": 50}, {"pause": pause}, {"setWeight": 100}]}}


def test_the_serving_aliases_follow_a_canary_through_set_back_and_promotion(
    served: OperatorProcess,
    engine: CompiledEngine,
    mlflow_server: LocalMlflow,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
) -> None:
    model = f"digits-{namespace}"
    registry = {
        "provider": "mlflow",
        "project": "digits",
        "trackingURI": mlflow_server.tracking_uri,
        "collection": model,
    }
    mlflow = MlflowClient(mlflow_server.tracking_uri)
    first = _ready_version(custom, namespace, "v1", engine, registry)
    idep = {
        "apiVersion": f"{G}/{V}",
        "kind": "InferenceDeployment",
        "metadata": {"name": "digits"},
        "spec": {
            "modelVersionRef": {"name": "v1"},
            "replicas": 2,
            "resources": {"gpus": 0},
            "triton": {"maxBatchSize": 16},
            "registryAliases": {"stable": "production", "canary": "canary"},
            # A pause without a duration holds the canary until the spec changes.
            **_steps({}),
        },
    }
    custom.create_namespaced_custom_object(G, V, namespace, "inferencedeployments", idep)

    # v1 Available: `production` names its registry version.
    available = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("phase") == "Available"
        and (o["status"].get("registry") or {}).get("stableRegistryVersion"),
        "v1 Available, its alias applied",
    )  # fmt: skip
    applied = dict(available["status"]["registry"])
    assert applied.pop("checkedTime")  # when the registry last confirmed it
    assert applied == {
        "modelName": model,
        "stableAlias": "production",
        "stableModelVersion": "v1",
        "stableRegistryVersion": first,
        "canaryAlias": "canary",
    }
    assert _condition(available, SYNCED)["status"] == "True"
    assert _alias(mlflow, model, "production") == first
    assert _alias(mlflow, model, "canary") is None
    # v1's own status learns of its new alias from the registry.
    _wait(
        custom, namespace, "modelversions", "v1",
        lambda o: "production" in o["status"]["registry"]["aliases"], "v1's status naming production", 60,
    )  # fmt: skip

    # v2's canary, held at 50%: `canary` names v2's version, `production` stays on v1's.
    second = _ready_version(custom, namespace, "v2", engine, registry)
    assert second != first
    patch = {"spec": {"modelVersionRef": {"name": "v2"}}}
    custom.patch_namespaced_custom_object(G, V, namespace, "inferencedeployments", "digits", patch)
    canary = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: (o.get("status", {}).get("registry") or {}).get("canaryRegistryVersion") == second,
        "the canary alias on v2's version",
    )  # fmt: skip
    assert canary["status"]["canaryVersion"] == "v2"
    assert canary["status"]["canaryWeight"] > 0
    assert _alias(mlflow, model, "canary") == second
    assert _alias(mlflow, model, "production") == first

    # The spec set back to v1 while the canary runs: Argo Rollouts goes back to the stable pods, and
    # the canary alias comes off v2's version; production stays.
    patch = {"spec": {"modelVersionRef": {"name": "v1"}}}
    custom.patch_namespaced_custom_object(G, V, namespace, "inferencedeployments", "digits", patch)
    back = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("canaryVersion") is None
        and "canaryModelVersion" not in (o["status"].get("registry") or {}),
        "the canary of v2 gone, its alias off",
    )  # fmt: skip
    assert back["status"]["stableVersion"] == "v1"
    assert _alias(mlflow, model, "canary") is None
    assert _alias(mlflow, model, "production") == first
    assert "canary" not in mlflow.get_model_version(model, second).aliases
    _wait(
        custom, namespace, "modelversions", "v2",
        lambda o: "canary" not in o["status"]["registry"]["aliases"], "v2's status without canary", 60,
    )  # fmt: skip

    # v2 again, with a pause that ends, while MLflow is down: the canary runs and is promoted all the
    # same (serving never waits on the registry); RegistryAliasesSynced says why nothing moved.
    mlflow_server.stop()
    try:
        patch = {"spec": {"modelVersionRef": {"name": "v2"}, **_steps({"durationSeconds": 5})}}
        custom.patch_namespaced_custom_object(G, V, namespace, "inferencedeployments", "digits", patch)
        down = _wait(
            custom, namespace, "inferencedeployments", "digits",
            lambda o: o.get("status", {}).get("stableVersion") == "v2" and o["status"]["phase"] == "Available"
            and _condition(o, SYNCED).get("reason") == "RegistryUnavailable",
            "v2 promoted while the registry is down", 180,
        )  # fmt: skip
        assert _condition(down, "Ready")["status"] == "True"
        assert _condition(down, SYNCED)["status"] == "False"
        # What the registry last took stays recorded: production on v1's version.
        assert down["status"]["registry"]["stableRegistryVersion"] == first
        wait_for_events(
            core, namespace, "digits",
            lambda events: any(e.reason == "RegistryUnavailable" and e.type == "Warning" for e in events),
            "the RegistryUnavailable Warning event",
        )  # fmt: skip
        time.sleep(2)  # a retry or two with the registry still down
    finally:
        mlflow_server.start()
    # Back: the outage backoff retries, production moves to v2's version.
    promoted = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: (o.get("status", {}).get("registry") or {}).get("stableRegistryVersion") == second,
        "production on v2's version once MLflow is back", 120,
    )  # fmt: skip
    warnings = [
        e
        for e in core.list_namespaced_event(namespace, field_selector="involvedObject.name=digits").items
        if e.reason == "RegistryUnavailable"
    ]
    assert len(warnings) == 1, "one Warning for the outage"
    assert (warnings[0].count or 1) == 1, "one Warning for the outage"
    assert promoted["status"]["phase"] == "Available"
    assert "canaryRegistryVersion" not in promoted["status"]["registry"]
    assert _alias(mlflow, model, "production") == second
    assert _alias(mlflow, model, "canary") is None
    assert not {"production", "canary"} & set(mlflow.get_model_version(model, first).aliases)
    assert _condition(promoted, SYNCED)["reason"] == "AliasesApplied"
    # The ModelVersion that lost production refreshes its status from the registry, and says so.
    _wait(
        custom, namespace, "modelversions", "v1",
        lambda o: "production" not in o["status"]["registry"]["aliases"],
        "v1's status without production", 60,
    )  # fmt: skip
    wait_for_events(
        core, namespace, "v1", lambda events: "AliasMoved" in {e.reason for e in events}, "AliasMoved on v1"
    )
    _wait(
        custom, namespace, "modelversions", "v2",
        lambda o: "production" in o["status"]["registry"]["aliases"], "v2's status naming production", 60,
    )  # fmt: skip

    # Settled: nothing is moved again, however often the objects are reconciled (the serving pods'
    # status changes keep waking the InferenceDeployment); the registry is only read, by the check.
    time.sleep(3)
    before = _registry_requests(served)
    time.sleep(6)
    after = _registry_requests(served)
    changed = {op for op in set(before) | set(after) if before.get(op) != after.get(op)}
    assert changed <= {"get_model_version"}, f"registry writes while nothing changed: {before} -> {after}"
    assert after.get("get_model_version", 0) - before.get("get_model_version", 0) <= 2

    # A person deletes `production` in MLflow by hand: the periodic check puts it back on what serves.
    mlflow.delete_registered_model_alias(model, "production")
    wait_for(
        lambda: _alias(mlflow, model, "production") == second,
        "production back on v2's version after a hand delete",
        ALIAS_CHECK_SECONDS * 3,
    )
    wait_for_events(
        core, namespace, "digits", lambda events: "AliasRestored" in {e.reason for e in events},
        "AliasRestored on the InferenceDeployment",
    )  # fmt: skip
    print(f"registry requests in all, by operation: {_registry_requests(served)}")


def _registry_requests(operator: OperatorProcess) -> dict[str, float]:
    found: dict[str, float] = {}
    for match in re.finditer(r"mlops_registry_requests_total\{([^}]*)\} ([0-9.e+]+)", operator.metrics()):
        operation = re.search(r'operation="([^"]+)"', match.group(1))
        if operation:
            found[operation.group(1)] = found.get(operation.group(1), 0) + float(match.group(2))
    return found
