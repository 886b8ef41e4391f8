"""The real Argo Rollouts controller and the real Prometheus of the local control plane.

No operator here: the tests write Rollouts and AnalysisTemplates themselves, as the InferenceDeployment
controller will, and prove the infrastructure it relies on: a canary goes through its steps to 100% on
simulated nodes (kwok makes the pods Ready, which the controller waits for at each step), and an
analysis whose Prometheus query breaches its condition aborts it. The breach is real: a small HTTP
server process fails the requests sent to it and counts them in Triton's metric names, the file SD
file publishes it, the real Prometheus scrapes it every second and the controller's Prometheus provider
queries it. A new revision after an abort starts a new canary without `kubectl argo rollouts retry`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from kubernetes import client, watch

from mlops_operator.dev import prometheus_sd
from mlops_operator.dev.controlplane import KWOK_TOLERATION, ControlPlane, free_port
from tests.waiting import wait_for

GROUP, VERSION = "argoproj.io", "v1alpha1"
APP = "demo"
STEPS: list[dict[str, Any]] = [{"setWeight": 50}, {"pause": {"duration": "1s"}}, {"setWeight": 100}]
# Success rate of the canary's requests over a window, as the operator's analysis computes it from
# Triton's counters (which carry no `_total` suffix).
MODEL = "demo"
WINDOW = "30s"
MIN_SUCCESS_RATE = 0.9


@pytest.fixture
def rollouts(control_plane: ControlPlane) -> ControlPlane:
    if not (control_plane.argo_rollouts and control_plane.prometheus):
        pytest.skip("the session control plane runs without the rollouts controller or Prometheus")
    return control_plane


def service(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"app": APP}, "ports": [{"port": 8000, "targetPort": 8000}]},
    }


def rollout(namespace: str, revision: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Two replicas (50% is one pod of each), a basic canary (no traffic router: the weight is the
    replica ratio), pods that tolerate the simulated nodes' taint. `revision` changes the template."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Rollout",
        "metadata": {"name": APP, "namespace": namespace},
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": {"app": APP}},
            "template": {
                "metadata": {"labels": {"app": APP}, "annotations": {"demo/revision": revision}},
                "spec": {
                    "tolerations": [KWOK_TOLERATION],
                    "containers": [{"name": "server", "image": "example.invalid/serve:1"}],
                },
            },
            "strategy": {
                "canary": {"stableService": f"{APP}-stable", "canaryService": f"{APP}-canary", "steps": steps}
            },
        },
    }


def get_rollout(custom: client.CustomObjectsApi, namespace: str) -> dict[str, Any]:
    obj: dict[str, Any] = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "rollouts", APP)
    return obj


def settled(obj: dict[str, Any]) -> bool:
    """Healthy at the current spec: every step done, the new ReplicaSet promoted to stable."""
    status = obj.get("status") or {}
    return (
        status.get("observedGeneration") == str(obj["metadata"]["generation"])
        and status.get("phase") == "Healthy"
        and bool(status.get("stableRS"))
        and status.get("stableRS") == status.get("currentPodHash")
    )


def aborted(obj: dict[str, Any]) -> bool:
    status = obj.get("status") or {}
    return status.get("abort") is True and status.get("phase") == "Degraded"


def follow(
    custom: client.CustomObjectsApi,
    namespace: str,
    since: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: int = 30,
) -> list[dict[str, Any]]:
    """Every status the Rollout goes through after resourceVersion `since` (a watch: no step is missed
    between polls, they last milliseconds here), up to the first for which `until` holds."""
    seen: list[dict[str, Any]] = []
    stream = watch.Watch()
    for event in stream.stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        namespace,
        "rollouts",
        field_selector=f"metadata.name={APP}",
        resource_version=since,
        timeout_seconds=timeout,
    ):
        obj = event["object"]
        seen.append(obj.get("status") or {})
        if until(obj):
            stream.stop()
            return seen
    raise AssertionError(f"the Rollout did not get there in {timeout}s; last status: {seen[-1:]}")


def apply_and_follow(
    plane: ControlPlane,
    custom: client.CustomObjectsApi,
    namespace: str,
    manifests: list[dict[str, Any]],
    until: Callable[[dict[str, Any]], bool],
) -> list[dict[str, Any]]:
    try:
        since = get_rollout(custom, namespace)["metadata"]["resourceVersion"]
    except client.ApiException as error:
        if error.status != 404:
            raise
        since = "0"  # not there yet: from its creation on
    plane.kubectl_apply(manifests)
    return follow(custom, namespace, since, until)


def replica_sets(core_api: client.ApiClient, namespace: str) -> dict[str, int]:
    """ReplicaSet name -> desired replicas."""
    apps = client.AppsV1Api(core_api)
    return {rs.metadata.name: rs.spec.replicas for rs in apps.list_namespaced_replica_set(namespace).items}


def service_hash(core: client.CoreV1Api, namespace: str, name: str) -> str | None:
    selector = core.read_namespaced_service(name, namespace).spec.selector or {}
    return selector.get("rollouts-pod-template-hash")


def test_canary_goes_through_its_steps_to_full_weight(
    rollouts: ControlPlane, custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str
) -> None:
    services = [service(namespace, f"{APP}-stable"), service(namespace, f"{APP}-canary")]
    # The first revision has no canary: it becomes stable at once, once its pods are Ready.
    first = apply_and_follow(
        rollouts, custom, namespace, [*services, rollout(namespace, "1", STEPS)], settled
    )
    stable = first[-1]["stableRS"]
    assert first[-1]["readyReplicas"] == 2
    assert first[-1]["availableReplicas"] == 2
    assert first[-1]["currentStepIndex"] == len(STEPS)

    seen = apply_and_follow(rollouts, custom, namespace, [rollout(namespace, "2", STEPS)], settled)
    canary = seen[-1]["currentPodHash"]
    assert canary != stable
    assert seen[-1]["stableRS"] == canary
    # Step 0 (setWeight 50) done with one canary pod beside one stable pod, the stable ReplicaSet still
    # the stable one; then the pause (step 1), then 100%.
    half = [s for s in seen if s.get("currentStepIndex") == 1 and s.get("stableRS") == stable]
    assert half, f"never at the 50% step: {seen}"
    assert any(s.get("updatedReplicas") == 1 and s.get("availableReplicas") == 2 for s in half)
    assert any(s.get("currentStepIndex") == 2 for s in seen), (
        "the pause step was never passed (step index 2 never seen)"
    )
    steps = [s["currentStepIndex"] for s in seen if s.get("currentPodHash") == canary]
    assert steps == sorted(steps), f"the canary's steps went backwards: {steps}"
    final = seen[-1]
    conditions = {c["type"]: c["status"] for c in final["conditions"]}
    assert conditions["Completed"] == "True"
    assert conditions["Healthy"] == "True"
    assert final["currentStepIndex"] == len(STEPS)
    assert final["updatedReplicas"] == 2
    assert "abort" not in final
    # Both Services come to select the new pods and the old ReplicaSet is scaled to zero. The controller
    # writes the new stableRS to status first and switches the stable Service's selector on its next
    # reconcile, so these converge shortly after the status settles (CI saw the old hash once).

    def switched() -> dict[str, Any] | None:
        seen = {
            "stable": service_hash(core, namespace, f"{APP}-stable"),
            "canary": service_hash(core, namespace, f"{APP}-canary"),
            "replicaSets": replica_sets(core.api_client, namespace),
        }
        sets = seen["replicaSets"]
        done = (
            seen["stable"] == canary
            and seen["canary"] == canary
            and sets.get(f"{APP}-{canary}") == 2
            and sets.get(f"{APP}-{stable}") == 0
        )
        return seen if done else None

    wait_for(switched, "both Services on the new pods and the old ReplicaSet at zero", timeout=30)


# ------------------------------------------------------------------------------ analysis ---

# A serving process in miniature: answers inference requests (or fails them, once told to) and counts
# them on /metrics under Triton's metric names and labels.
SERVER = r"""
import http.server, sys, threading
lock = threading.Lock()
state = {"fail": False, "success": 0, "failure": 0}
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with lock:
            body = (
                "# TYPE nv_inference_request_success counter\n"
                f'nv_inference_request_success{{model="{MODEL}",version="1"}} {state["success"]}\n'
                "# TYPE nv_inference_request_failure counter\n"
                f'nv_inference_request_failure{{model="{MODEL}",reason="BACKEND",version="1"}} '
                f'{state["failure"]}\n'
            ).encode()
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with lock:
            if self.path.startswith("/fail/"):  # the test's switch: make the model fail (or not)
                state["fail"] = self.path == "/fail/on"
                code = 204
            else:
                code = 500 if state["fail"] else 200
                state["failure" if state["fail"] else "success"] += 1
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
MODEL = sys.argv[2]
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


@dataclass
class ServingProcess:
    process: subprocess.Popen[bytes]
    address: str

    def post(self, path: str) -> int:
        request = urllib.request.Request(f"http://{self.address}{path}", data=b"{}", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def infer(self, times: int) -> list[int]:
        return [self.post(f"/v2/models/{MODEL}/infer") for _ in range(times)]

    def failing(self, on: bool) -> None:
        assert self.post("/fail/on" if on else "/fail/off") == 204


@pytest.fixture
def serving(rollouts: ControlPlane, namespace: str) -> Iterator[ServingProcess]:
    """The serving process, published in Prometheus' file SD like a serving pod's metrics port."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", SERVER, str(port), MODEL])
    server = ServingProcess(process, f"127.0.0.1:{port}")
    try:
        wait_for(lambda: _answers(server), "the serving process to listen", timeout=10, interval=0.1)
        labels = {"namespace": namespace, "pod": f"{APP}-serving-0"}
        prometheus_sd.publish(rollouts.prometheus_sd_file, server.address, labels)
        # Scraped once before anything happens: a counter's first sample is its baseline, so requests
        # made before it would not show in rate().
        wait_for(
            lambda: prometheus_value(rollouts, f'up{{instance="{server.address}"}}') == 1,
            "Prometheus to scrape the serving process (file SD)",
            timeout=20,
        )
        yield server
    finally:
        prometheus_sd.unpublish(rollouts.prometheus_sd_file, server.address)
        process.terminate()
        process.wait(timeout=10)


def _answers(server: ServingProcess) -> bool:
    try:
        return server.post("/fail/off") == 204
    except OSError:
        return False


def success_rate_query(namespace: str) -> str:
    selector = f'{{model="{MODEL}",namespace="{namespace}"}}'
    succeeded = f"sum(rate(nv_inference_request_success{selector}[{WINDOW}]))"
    failed = f"sum(rate(nv_inference_request_failure{selector}[{WINDOW}]))"
    return f"{succeeded} / ({succeeded} + {failed})"


def prometheus_value(plane: ControlPlane, query: str) -> float | None:
    """The query's single value now, or None while Prometheus has no sample for it."""
    url = f"{plane.prometheus_url}/api/v1/query?query={urllib.parse.quote(query)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        result = json.load(response)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def analysis_template(plane: ControlPlane, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "success-rate", "namespace": namespace},
        "spec": {
            "metrics": [
                {
                    "name": "success-rate",
                    "interval": "1s",
                    "count": 2,
                    "failureLimit": 0,
                    "successCondition": f"result[0] >= {MIN_SUCCESS_RATE}",
                    "provider": {
                        "prometheus": {
                            "address": plane.prometheus_url,
                            "query": success_rate_query(namespace),
                        }
                    },
                }
            ]
        },
    }


def wait_for_rate(plane: ControlPlane, namespace: str, check: Callable[[float], bool], what: str) -> float:
    """Until Prometheus has scraped what the test just did (file SD picks a new target up within ~5 s:
    Prometheus hands discovery updates to the scraper at most every 5 s; then one scrape a second)."""

    def probe() -> float | None:
        value = prometheus_value(plane, success_rate_query(namespace))
        return value if value is not None and check(value) else None

    # wait_for wants a truthy value; 0.0 (every request failed) is a valid answer.
    return wait_for(lambda: (v,) if (v := probe()) is not None else None, what, timeout=30)[0]


def analysis_runs(custom: client.CustomObjectsApi, namespace: str) -> dict[str, dict[str, Any]]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "analysisruns")["items"]
    return {run["metadata"]["name"]: run for run in items}


def test_failed_analysis_aborts_and_a_new_revision_starts_a_new_canary(
    rollouts: ControlPlane,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
    serving: ServingProcess,
) -> None:
    steps = [
        {"setWeight": 50},
        {"analysis": {"templates": [{"templateName": "success-rate"}]}},
        {"setWeight": 100},
    ]
    services = [service(namespace, f"{APP}-stable"), service(namespace, f"{APP}-canary")]
    template = analysis_template(rollouts, namespace)
    first = apply_and_follow(
        rollouts, custom, namespace, [*services, template, rollout(namespace, "1", steps)], settled
    )
    stable = first[-1]["stableRS"]

    # The model starts failing its requests; wait until Prometheus has seen it.
    serving.failing(True)
    assert set(serving.infer(20)) == {500}
    rate = wait_for_rate(
        rollouts, namespace, lambda v: v < MIN_SUCCESS_RATE, "Prometheus to see the failures"
    )
    assert rate == 0.0

    seen = apply_and_follow(rollouts, custom, namespace, [rollout(namespace, "2", steps)], aborted)
    status = seen[-1]
    bad = status["currentPodHash"]
    assert bad != stable
    assert status["stableRS"] == stable
    assert status["abortedAt"]
    assert 'Metric "success-rate" assessed Failed' in status["message"]
    assert status["message"].startswith("RolloutAborted: Rollout aborted update to revision 2")
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert (progressing["status"], progressing["reason"]) == ("False", "RolloutAborted")
    run = analysis_runs(custom, namespace)[status["canary"]["currentStepAnalysisRunStatus"]["name"]]
    assert run["status"]["phase"] == "Failed"
    metric = run["status"]["metricResults"][0]
    assert metric["name"] == "success-rate"
    assert metric["phase"] == "Failed"
    assert metric["measurements"][-1]["value"] == "[0]"
    # The stable pods keep serving: the canary is scaled away, the Services point at stable again.
    # (The controller converges these over its next reconciles after the abort status: wait, then check.)
    wait_for(
        lambda: (
            replica_sets(core.api_client, namespace).get(f"{APP}-{bad}") == 0
            and service_hash(core, namespace, f"{APP}-canary") == stable
        ),
        "the aborted canary's ReplicaSet at 0 and the canary Service back on stable",
        timeout=15,
    )
    assert replica_sets(core.api_client, namespace)[f"{APP}-{stable}"] == 2
    assert service_hash(core, namespace, f"{APP}-stable") == stable

    # A fixed model, then a new revision: a new canary starts without `kubectl argo rollouts retry`
    # (a new pod template resets status.abort) and, its analysis passing, completes.
    serving.failing(False)
    assert set(serving.infer(400)) == {200}
    wait_for_rate(rollouts, namespace, lambda v: v >= MIN_SUCCESS_RATE, "Prometheus to see the recovery")
    seen = apply_and_follow(rollouts, custom, namespace, [rollout(namespace, "3", steps)], settled)
    good = seen[-1]["stableRS"]
    assert good not in (stable, bad)
    assert "abort" not in seen[-1]
    assert any(s.get("currentStepIndex") == 1 and s.get("updatedReplicas") == 1 for s in seen)
    passed = [
        run for name, run in analysis_runs(custom, namespace).items() if name.startswith(f"{APP}-{good}-")
    ]
    assert [run["status"]["phase"] for run in passed] == ["Successful"]
