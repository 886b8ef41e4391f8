"""An InferenceDeployment that follows a ModelPipeline (spec.modelVersionFrom) on the real control
plane: the real apiserver with the generated CRDs, the operator process, the real trainer compiling
and evaluating the ModelVersions, real tritonserver processes for the serving pods and the real Argo
Rollouts controller (as tests/integration/test_inferencedeployment.py, whose fixtures this uses).

What is not real here: the promotion itself. The pipeline is created with spec.suspend (no runs,
so no training) and its status.latestPromoted is written by the test through the status
subresource, as the champion/challenger gate writes it once a challenger wins (that gate is tested
in test_modelpipeline*). The operator keeps status fields it does not compute, so the value stands;
this test is about what a follower does with it.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.runner import LocalPodRunner
from tests.integration.conftest import OperatorProcess
from tests.integration.digits_engine import CompiledEngine
from tests.integration.test_inferencedeployment import (  # `serving`: the operator and serving pods' runner
    G,
    V,
    _get,
    _idep,
    _ready,
    _ready_version,
    _wait,
    serving,  # noqa: F401
)
from tests.waiting import wait_for_events

PIPELINE = "digits-ct"


def _pipeline() -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelPipeline",
        "metadata": {"name": PIPELINE},
        "spec": {
            "datasetRef": {"name": "digits"},
            "suspend": True,  # no runs: latestPromoted is set by the test (module docstring)
            "triggers": {},
            "trainingRunTemplate": {
                "model": "digits-cnn",
                "output": {"uri": "s3://unused/models/digits-ct/"},
            },
            "modelVersionTemplate": {
                "modelName": "digits",
                "compile": {"target": "onnx", "precision": "fp32", "maxBatchSize": 16},
            },
        },
    }


def _promote(custom: client.CustomObjectsApi, namespace: str, version: str) -> None:
    """What the gate does when a challenger wins: status.latestPromoted names it."""
    patch = {"status": {"latestPromoted": version}}
    custom.patch_namespaced_custom_object_status(G, V, namespace, "modelpipelines", PIPELINE, patch)


def test_a_follower_waits_for_a_promotion_serves_it_and_canaries_the_next(
    serving: tuple[OperatorProcess, LocalPodRunner],  # noqa: F811 (the fixture imported above)
    engine: CompiledEngine,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    control_plane: ControlPlane,
):
    custom.create_namespaced_custom_object(G, V, namespace, "modelpipelines", _pipeline())
    follower = _idep(
        "unused",
        rollout={"steps": [{"setWeight": 50}, {"pause": {}}]},  # the canary holds at 50% for a person
    )
    del follower["spec"]["modelVersionRef"]
    follower["spec"]["modelVersionFrom"] = {"pipelineRef": {"name": PIPELINE}}
    custom.create_namespaced_custom_object(G, V, namespace, "inferencedeployments", follower)

    # Nothing promoted yet: Pending, and Ready says why.
    pending = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: _ready(o).get("reason") == "NoPromotedVersion", "the follower waiting for a promotion",
    )  # fmt: skip
    assert pending["status"]["phase"] == "Pending"
    assert _ready(pending)["status"] == "False"
    assert f"ModelPipeline {PIPELINE} has promoted no ModelVersion yet" in _ready(pending)["message"]
    assert pending["status"]["resolvedFrom"]["pipeline"] == PIPELINE
    assert "modelVersion" not in pending["status"]["resolvedFrom"]

    # The pipeline promotes v1 (its status written once by the operator first: Suspended).
    _wait(
        custom, namespace, "modelpipelines", PIPELINE,
        lambda o: o.get("status", {}).get("phase") == "Suspended", "the suspended pipeline's status",
    )  # fmt: skip
    _ready_version(custom, namespace, "v1", engine)
    _ready_version(custom, namespace, "v2", engine)
    _promote(custom, namespace, "v1")
    available = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("phase") == "Available", "v1 Available", 180,
    )  # fmt: skip
    status = available["status"]
    assert (status["stableVersion"], status["modelVersion"], status["workloadKind"]) == (
        "v1",
        "v1",
        "Rollout",
    )
    assert status["resolvedFrom"]["pipeline"] == PIPELINE
    assert status["resolvedFrom"]["modelVersion"] == "v1"
    assert status["resolvedFrom"]["resolvedTime"].endswith("Z")
    assert _get(custom, namespace, "modelpipelines", PIPELINE)["status"]["latestPromoted"] == "v1"

    # The pipeline promotes v2: a canary of it, as a changed spec.modelVersionRef starts one.
    _promote(custom, namespace, "v2")
    canary = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: o.get("status", {}).get("canaryVersion") == "v2", "the canary of v2",
    )  # fmt: skip
    assert canary["status"]["stableVersion"] == "v1"
    assert canary["status"]["resolvedFrom"]["modelVersion"] == "v2"
    assert canary["spec"] == available["spec"]  # Git's copy never changed
    rollout = custom.get_namespaced_custom_object(
        "argoproj.io", "v1alpha1", namespace, "rollouts", "digits-triton"
    )
    annotations = rollout["spec"]["template"]["metadata"]["annotations"]
    assert "v2" in annotations.values()
    # `kubectl get idep -o wide`: MODEL is what rolls out (the spec names none), PIPELINE what is followed.
    header, row = control_plane.kubectl(
        "get", "idep", "digits", "-n", namespace, "-o", "wide"
    ).stdout.splitlines()[:2]
    cells = {name: row[header.index(name) :].split(" ")[0] for name in header.split()}
    assert (cells["MODEL"], cells["PIPELINE"], cells["STABLE"], cells["CANARY"]) == (
        "v2",
        PIPELINE,
        "v1",
        "v2",
    )
    resolved = [
        f"ModelPipeline {PIPELINE} promoted v1: rolling out",
        f"ModelPipeline {PIPELINE} promoted v2: rolling out",
    ]
    wait_for_events(
        core, namespace, "digits",
        lambda events: set(resolved) <= {e.message for e in events if e.reason == "ModelVersionResolved"}
        and any(e.reason == "RolloutStarted" and "rolling out v2, replacing v1" in e.message for e in events),
        "a ModelVersionResolved event per promotion and the canary's RolloutStarted",
    )  # fmt: skip

    # The pipeline deleted mid-canary: nothing to resolve, so nothing new is rolled out, and what
    # runs goes on (v1 stable, the canary of v2, whose ModelVersion is still Ready, held at its pause);
    # CanaryWaiting says why.
    custom.delete_namespaced_custom_object(G, V, namespace, "modelpipelines", PIPELINE)
    orphaned = _wait(
        custom, namespace, "inferencedeployments", "digits",
        lambda o: _ready(o, "CanaryWaiting").get("reason") == "ModelPipelineNotFound", "the pipeline gone",
    )  # fmt: skip
    assert (
        f"ModelPipeline {PIPELINE} (spec.modelVersionFrom) does not exist"
        in _ready(orphaned, "CanaryWaiting")["message"]
    )
    assert (orphaned["status"]["stableVersion"], orphaned["status"]["canaryVersion"]) == ("v1", "v2")
    assert _ready(orphaned)["status"] == "True"
    assert "modelVersion" not in orphaned["status"]["resolvedFrom"]
