"""The AnalysisTemplate the builders make, run by the real Argo Rollouts controller against the real
Prometheus (issue 15 item 6). No operator: the test creates AnalysisRuns from the template as a
Rollout's analysis step does (the canary's pod-template-hash and the count as args).

- A canary pod that appears as its analysis starts (its metrics not scraped yet): with the template's
  `initialDelay` every measurement is Successful; without it (the template before this change) the
  first is an Error ("no data returned"), one of the errors Argo Rollouts tolerates spent before
  anything could be measured.
- A Prometheus that cannot be reached ends the analysis in Error (metrics unavailable), not Failed
  (metrics breached), after `consecutiveErrorLimit` + 1 errors in a row.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.api.v1alpha1 import DatasetSpec, InferenceDeploymentSpec
from mlops_operator.builders.serving import ServingInputs, build_analysis_template, canary_labels
from mlops_operator.dev import prometheus_sd
from mlops_operator.dev.controlplane import ControlPlane, free_port
from tests.integration.test_rollouts_and_prometheus import SERVER, ServingProcess, _answers
from tests.waiting import wait_for

GROUP, VERSION = "argoproj.io", "v1alpha1"
MODEL = "digits"


@pytest.fixture
def plane(control_plane: ControlPlane) -> ControlPlane:
    if not (control_plane.argo_rollouts and control_plane.prometheus):
        pytest.skip("the session control plane runs without the rollouts controller or Prometheus")
    return control_plane


def _inputs(namespace: str, address: str, **analysis: Any) -> ServingInputs:
    return ServingInputs(
        name="digits",
        namespace=namespace,
        uid="0b7c1e52-6f4e-4d0a-9a57-1d2e3f4a5b6c",
        spec=InferenceDeploymentSpec.model_validate(
            {"modelVersionRef": {"name": "v2"}, "rollout": {"analysis": {"intervalSeconds": 10, **analysis}}}
        ),
        model_version="v2",
        model_name=MODEL,
        repository_uri="s3://data/engines/triton/digits/v2/",
        dataset=DatasetSpec.model_validate(
            {"source": {"uri": "s3://data/digits/", "credentialsSecretRef": {"name": "s3"}}}
        ),
        fetch_image="example.invalid/trainer:1",
        prometheus_address=address,
    )


def _run(
    custom: client.CustomObjectsApi, namespace: str, name: str, template: dict[str, Any], **args: str
) -> None:
    """An AnalysisRun of `template` with `args`, as a Rollout's analysis step creates one."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AnalysisRun",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "args": [{"name": k, "value": v} for k, v in args.items()],
            "metrics": copy.deepcopy(template["spec"]["metrics"]),
        },
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "analysisruns", body)


def _finished(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any] | None:
    run = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "analysisruns", name)
    status = run.get("status") or {}
    done = status.get("phase") in ("Successful", "Failed", "Error", "Inconclusive")
    return dict(status) if done else None


@dataclasses.dataclass
class Canary:
    """A serving process standing in for one canary pod: Triton's metric names, scraped through the
    file SD with the target labels the chart's serving PodMonitor gives a pod."""

    server: ServingProcess
    labels: dict[str, str]


@pytest.fixture
def canaries(plane: ControlPlane) -> Iterator[list[Canary]]:
    started: list[Canary] = []
    yield started
    for canary in started:
        prometheus_sd.unpublish(plane.prometheus_sd_file, canary.server.address)
        canary.server.process.terminate()
        canary.server.process.wait(timeout=10)


def _start(plane: ControlPlane, canaries: list[Canary], labels: dict[str, str]) -> Canary:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), MODEL])
    canary = Canary(ServingProcess(process, f"127.0.0.1:{port}"), labels)
    canaries.append(canary)
    wait_for(lambda: _answers(canary.server), "the serving process to listen", timeout=10, interval=0.1)
    return canary


def test_with_its_initial_delay_a_new_canarys_first_measurement_is_no_error(
    plane: ControlPlane, custom: client.CustomObjectsApi, namespace: str, canaries: list[Canary]
) -> None:
    inputs = _inputs(namespace, plane.prometheus_url)
    template = build_analysis_template(inputs)
    (success,) = template["spec"]["metrics"]
    assert success["initialDelay"] == "10s"
    before = copy.deepcopy(template)  # the template as it was made before: no initialDelay
    del before["spec"]["metrics"][0]["initialDelay"]
    runs = {"with-delay": (template, "c4n4ry1"), "without-delay": (before, "c4n4ry2")}
    for _, pod_hash in runs.values():
        _start(plane, canaries, canary_labels(inputs, pod_hash))
    # The canary pods appear as the analysis starts: published (scraped within ~5 s, a rate needs
    # two samples) while the runs are created, and called all along.
    for canary in canaries:
        prometheus_sd.publish(plane.prometheus_sd_file, canary.server.address, canary.labels)
    for name, (spec, pod_hash) in runs.items():
        _run(custom, namespace, name, spec, **{"canary-hash": pod_hash, "count": "2"})

    def served() -> dict[str, dict[str, Any]] | None:
        for canary in canaries:
            assert set(canary.server.infer(5)) == {200}
        done = {name: _finished(custom, namespace, name) for name in runs}
        return done if all(done.values()) else None  # type: ignore[return-value]

    results = wait_for(served, "both AnalysisRuns to finish", timeout=90, interval=1)
    delayed = results["with-delay"]["metricResults"][0]
    assert results["with-delay"]["phase"] == "Successful", results["with-delay"]
    assert delayed.get("error", 0) == 0
    assert [m["phase"] for m in delayed["measurements"]] == ["Successful", "Successful"]
    assert float(delayed["measurements"][0]["value"].strip("[]")) == 1.0
    # The same template without the delay spends an error on its first measurement.
    undelayed = results["without-delay"]["metricResults"][0]
    assert undelayed.get("error", 0) >= 1, undelayed
    assert undelayed["measurements"][0]["phase"] == "Error"
    assert "no data" in undelayed["measurements"][0].get("message", ""), undelayed["measurements"][0]


def test_an_unreachable_prometheus_ends_the_analysis_in_error_not_failed(
    plane: ControlPlane, custom: client.CustomObjectsApi, namespace: str
) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    inputs = _inputs(namespace, closed, consecutiveErrorLimit=1, initialDelaySeconds=0)
    template = build_analysis_template(inputs)
    assert template["spec"]["metrics"][0]["consecutiveErrorLimit"] == 1
    _run(custom, namespace, "unreachable", template, **{"canary-hash": "c4n4ry", "count": "5"})
    status = wait_for(
        lambda: _finished(custom, namespace, "unreachable"), "the AnalysisRun to end", timeout=60
    )
    assert status["phase"] == "Error", status
    metric = status["metricResults"][0]
    assert metric["phase"] == "Error"
    assert metric.get("failed", 0) == 0  # nothing was measured, so nothing breached
    assert metric["consecutiveError"] == 2  # consecutiveErrorLimit 1: the second error in a row ends it
    assert "connection refused" in metric["measurements"][-1]["message"], metric["measurements"][-1]
