"""Faults of serving (issue 15, "The fault suite"): Argo Rollouts uninstalled and installed again
under a serving InferenceDeployment; the rollouts-controller and Prometheus down during a canary.

Real components as in test_inferencedeployment.py: the real trainer compiles and evaluates through the
local pod runner, a real tritonserver serves each serving pod, the real rollouts-controller and a real
Prometheus run the canary and its analysis. The session's control plane is restored after each test
(Argo Rollouts reinstalled, stopped components started) by `healthy_control_plane`.

Expected behaviour these tests hold the operator to (issue 15 items 6 and 9):
- Argo Rollouts uninstalled: the InferenceDeployment falls back to a Deployment (status.workloadKind
  Deployment) and is Available again on it; installed again: it moves back to a Rollout, which
  serves, and the Deployment is retired. Never `Available` on a workload that no longer exists.
- rollouts-controller down mid-canary: the canary waits (nothing is promoted or aborted meanwhile)
  and completes once the controller is back; one Rollout, v2 promoted.
- Prometheus down for less than the analysis' error tolerance: the canary is not aborted as if the
  model were bad; no AnalysisFailed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.runner import LocalPodRunner, ServingRuntime
from mlops_operator.dev.s3 import LocalS3
from tests.integration.conftest import OperatorProcess, create_s3_secret
from tests.integration.digits_engine import TRAINER, CompiledEngine, create_digits_dataset
from tests.integration.faults.conftest import Healed, start_fast_operator
from tests.integration.test_inferencedeployment import (
    G,
    Traffic,
    V,
    _point_at,
    _ready,
    _ready_version,
    _serve_v1,
    _wait,
)
from tests.waiting import wait_for

HEAL_BOUND = 90  # a serving workload also has to start its pods (tritonserver) again


@pytest.fixture
def fast_serving(
    healthy_control_plane: ControlPlane,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    s3: LocalS3,
    engine: CompiledEngine,
    namespace: str,
    tmp_path: Path,
) -> Iterator[tuple[OperatorProcess, LocalPodRunner]]:
    """test_inferencedeployment's `serving`, with the fault suite's short backoffs."""
    plane = healthy_control_plane
    create_s3_secret(core, namespace)
    create_digits_dataset(custom, s3, engine, namespace)
    operator = start_fast_operator(
        plane,
        namespace,
        tmp_path / "operator.log",
        MLOPS_TRITON_CPU_BACKEND="python",
        MLOPS_PROMETHEUS_ADDRESS=plane.prometheus_url,
    )
    runner = LocalPodRunner(
        api,
        namespace,
        executables={"mlops-trainer": str(TRAINER)},
        serving=ServingRuntime(sd_file=plane.prometheus_sd_file),
    )
    runner.start()
    try:
        yield operator, runner
    finally:
        runner.stop()
        operator.stop()


def _idep(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, namespace, "inferencedeployments", "digits")  # type: ignore[no-any-return]


def _rollouts(custom: client.CustomObjectsApi, namespace: str) -> list[str]:
    try:
        found = custom.list_namespaced_custom_object("argoproj.io", "v1alpha1", namespace, "rollouts")
    except client.ApiException as error:
        if error.status == 404:  # the CRD is gone
            return []
        raise
    return sorted(r["metadata"]["name"] for r in found["items"])


def _deployments(core: client.CoreV1Api, namespace: str) -> list[str]:
    return sorted(
        d.metadata.name for d in client.AppsV1Api(core.api_client).list_namespaced_deployment(namespace).items
    )


def _replica_sets(core: client.CoreV1Api, namespace: str) -> list[str]:
    apps = client.AppsV1Api(core.api_client)
    return sorted(
        r.metadata.name
        for r in apps.list_namespaced_replica_set(namespace).items
        if any(o.kind == "Rollout" for o in r.metadata.owner_references or [])
    )


def _serving_on(kind: str) -> Any:
    def check(obj: dict[str, Any]) -> bool:
        status = obj.get("status", {})
        return bool(
            status.get("workloadKind") == kind
            and status.get("phase") == "Available"
            and _ready(obj).get("status") == "True"
            and status.get("stableVersion") == "v1"
        )

    return check


def test_argo_rollouts_uninstalled_then_installed_again_under_a_serving_deployment(
    fast_serving: tuple[OperatorProcess, LocalPodRunner],
    healthy_control_plane: ControlPlane,
    engine: CompiledEngine,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    heal_record: list[Healed],
):
    """Item 9. Old operator: Argo Rollouts was discovered once at start-up; uninstalled, every Rollout
    went with its CRD and the InferenceDeployment kept saying Available over nothing (and its applies
    failed with 404); installed again, nothing changed."""
    plane = healthy_control_plane
    available = _serve_v1(custom, namespace, engine)
    assert available["status"]["workloadKind"] == "Rollout"
    assert _rollouts(custom, namespace) == ["digits-triton"]

    removed_at = time.monotonic()
    plane.uninstall_argo_rollouts()
    gone_at = time.monotonic()
    fallback = _wait(
        custom, namespace, "inferencedeployments", "digits", _serving_on("Deployment"),
        "a Deployment serving v1 after Argo Rollouts was uninstalled", HEAL_BOUND,
    )  # fmt: skip
    heal_record.append(
        Healed(
            "Argo Rollouts uninstalled under a serving InferenceDeployment (measured from the uninstall)",
            "its Rollout is gone with the CRD; it falls back to a Deployment and is Available on it",
            gone_at - removed_at,
            time.monotonic() - removed_at,
            "test_argo_rollouts_uninstalled_then_installed_again_under_a_serving_deployment",
        )
    )
    assert _deployments(core, namespace) == ["digits-triton"]
    assert fallback["status"]["endpoint"] == f"http://digits-triton.{namespace}.svc:8000"

    installed_at = time.monotonic()
    plane.install_argo_rollouts()
    back_at = time.monotonic()
    _wait(
        custom, namespace, "inferencedeployments", "digits", _serving_on("Rollout"),
        "the Rollout serving v1 after Argo Rollouts was installed again", HEAL_BOUND,
    )  # fmt: skip
    wait_for(lambda: not _deployments(core, namespace), "the fallback Deployment retired", HEAL_BOUND)
    heal_record.append(
        Healed(
            "Argo Rollouts installed again",
            "it moves back to a Rollout; the fallback Deployment is retired once the Rollout serves",
            back_at - installed_at,
            time.monotonic() - back_at,
            "test_argo_rollouts_uninstalled_then_installed_again_under_a_serving_deployment",
        )
    )
    assert _rollouts(custom, namespace) == ["digits-triton"]


def test_rollouts_controller_and_prometheus_down_during_a_canary(
    fast_serving: tuple[OperatorProcess, LocalPodRunner],
    healthy_control_plane: ControlPlane,
    engine: CompiledEngine,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    heal_record: list[Healed],
):
    """The rollouts-controller stops just as a canary starts and comes back; then Prometheus stops
    for less than the analysis' error tolerance while the analysis runs. v2 is promoted, once."""
    plane = healthy_control_plane
    _, runner = fast_serving
    _serve_v1(custom, namespace, engine)
    _ready_version(custom, namespace, "v2", engine)
    with Traffic(runner):
        (stable_set,) = _replica_sets(core, namespace)
        plane.stop_rollouts_controller()
        controller_down = time.monotonic()
        try:
            _point_at(custom, namespace, "v2")
            time.sleep(10)
            waiting = _idep(custom, namespace)["status"]
            assert waiting["stableVersion"] == "v1", "nothing is promoted without the controller"
            assert waiting.get("phase") != "Degraded"
            assert _replica_sets(core, namespace) == [stable_set], "no canary without the controller"
        finally:
            plane.start_rollouts_controller()
        controller_back = time.monotonic()
        wait_for(lambda: len(_replica_sets(core, namespace)) == 2, "v2's canary ReplicaSet", HEAL_BOUND)
        heal_record.append(
            Healed(
                "rollouts-controller down as a canary starts",
                "the canary waits (v1 keeps serving, not Degraded, no canary ReplicaSet), then starts",
                controller_back - controller_down,
                time.monotonic() - controller_back,
                "test_rollouts_controller_and_prometheus_down_during_a_canary",
            )
        )

        def analysing() -> bool:
            runs = custom.list_namespaced_custom_object("argoproj.io", "v1alpha1", namespace, "analysisruns")
            return any(r.get("status", {}).get("phase") == "Running" for r in runs["items"])

        wait_for(analysing, "the canary's analysis to run", HEAL_BOUND, interval=1)
        plane.stop_prometheus()
        prometheus_down = time.monotonic()
        try:
            time.sleep(12)  # at most two measurements fail: within Argo's tolerance of consecutive errors
        finally:
            plane.start_prometheus()
        prometheus_back = time.monotonic()

        def settled(obj: dict[str, Any]) -> bool:
            status = obj.get("status", {})
            return bool(status.get("stableVersion") == "v2" or status.get("phase") == "Degraded")

        promoted = _wait(
            custom, namespace, "inferencedeployments", "digits", settled, "v2 promoted (or aborted)", 180
        )
        assert promoted["status"]["stableVersion"] == "v2", "a monitoring blip is not a failed model"
        heal_record.append(
            Healed(
                "Prometheus down during a canary's analysis (12 s; healed = until promoted)",
                "the analysis goes on after it is back; the canary is promoted, not aborted",
                prometheus_back - prometheus_down,
                time.monotonic() - prometheus_back,
                "test_rollouts_controller_and_prometheus_down_during_a_canary",
            )
        )
    assert promoted["status"]["phase"] == "Available"
    assert _rollouts(custom, namespace) == ["digits-triton"], "one Rollout"
    events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=digits").items
    assert not [e for e in events if e.reason == "AnalysisFailed"]
