"""Reading and waiting on the operator's objects in integration tests: one copy for every module."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from tests.integration.digits_engine import CompiledEngine
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"


def get_object(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(G, V, namespace, plural, name)
    return obj


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def wait_object(
    custom: client.CustomObjectsApi,
    namespace: str,
    plural: str,
    name: str,
    check: Any,
    what: str,
    timeout: float = 180,
) -> dict[str, Any]:
    """The object once `check(object)` holds; on timeout the failure shows its status."""

    def probe() -> dict[str, Any] | None:
        obj = get_object(custom, namespace, plural, name)
        return obj if check(obj) else None

    try:
        return wait_for(probe, what, timeout, interval=0.5)
    except AssertionError as error:
        status = get_object(custom, namespace, plural, name).get("status")
        raise AssertionError(f"{error}\nstatus: {json.dumps(status, indent=1)}") from None


def ready_model_version(
    custom: client.CustomObjectsApi,
    namespace: str,
    name: str,
    engine: CompiledEngine,
    registry: dict[str, Any] | None = None,
    timeout: float = 240,
) -> dict[str, Any]:
    """A ModelVersion of the engine's trained model (its own compile and evaluate Jobs, run by the
    test's pod runner), once Ready; a Rejected or Failed one fails the test with its status."""
    spec: dict[str, Any] = {
        "modelName": "digits",
        "source": {"artifactURI": f"s3://{engine.bucket}/models/digits/"},
        "evaluation": {"datasetRef": {"name": "digits"}, "latencyBatches": 10},
        "compile": {"target": "onnx", "precision": "fp32", "maxBatchSize": 16},
    }
    if registry:
        spec["registry"] = registry
    body = {"apiVersion": f"{G}/{V}", "kind": "ModelVersion", "metadata": {"name": name}, "spec": spec}
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
    settled = wait_object(
        custom, namespace, "modelversions", name,
        lambda o: o.get("status", {}).get("phase") in ("Ready", "Rejected", "Failed"),
        f"ModelVersion {name} compiled and evaluated", timeout,
    )  # fmt: skip
    assert settled["status"]["phase"] == "Ready", settled["status"]
    return settled
