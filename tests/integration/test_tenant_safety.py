"""Tenant safety end to end (issue 9, section 3): real apiserver, moto's S3, the operator process.

- Secrets planted in a trainer's log tail, its result summary and a Secret never show up in the
  run's status, its events or the operator's log.
- A Dataset whose endpoint is off the operator's allow-list gets no request at all.
- A manifest over the operator's size cap is refused before it is downloaded.
- Every emptyDir of a workload pod has a sizeLimit the apiserver accepted.
"""

from __future__ import annotations

import base64
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.pods import finish_pod
from mlops_operator.dev.s3 import LocalS3
from tests.integration.conftest import OperatorProcess, _dataset_body, create_s3_secret, start_operator
from tests.integration.test_trainingrun import _run, _running_pods, _start, _summary, _wait_phase
from tests.waiting import wait_for, wait_for_events

G, V = "mlops.dev", "v1alpha1"
MANIFEST_CAP = 4096

# Planted values, each shaped like the real thing.
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzPLANTED12"  # 40 characters
WANDB_KEY = "5f3c9a0b7d1e4f2a8c6b0d9e1f3a5c7b9d0e2f4a"  # 40 hex
BEARER = "eyJhbGciOiJSUzI1NiJ9.eyJwbGFudGVkIjp0cnVlfQ.cGxhbnRlZC1zaWc"
PLANTED = (AWS_SECRET, WANDB_KEY, BEARER)


@pytest.fixture
def operator(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    """The operator as conftest starts it (loopback allowed), verbose, with a small manifest cap."""
    env = {"MLOPS_MANIFEST_MAX_BYTES": str(MANIFEST_CAP), "MLOPS_VERBOSE": "true"}
    running = start_operator(control_plane, namespace, tmp_path / "operator.log", env)
    try:
        yield running
    finally:
        running.stop()


def _dataset(s3: LocalS3, name: str, bucket: str, **source: Any) -> dict[str, Any]:
    body = _dataset_body(s3, bucket)
    body["metadata"]["name"] = name
    body["spec"]["source"].update(source)
    return body


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})


def _wait_dataset_reason(
    custom: client.CustomObjectsApi, namespace: str, name: str, reason: str
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(G, V, namespace, "datasets", name)
        return obj if _ready(obj).get("reason") == reason else None

    return wait_for(probe, f"Dataset {name} to have Ready reason {reason}", 60)  # type: ignore[no-any-return]


def _leaks(text: str) -> list[str]:
    encoded = [base64.b64encode(v.encode()).decode() for v in PLANTED]
    return [v for v in (*PLANTED, *encoded) if v in text]


def test_planted_secrets_never_reach_status_events_or_the_log(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    # The secrets live in a Secret the run uses (the W&B key goes into the pod as a secretKeyRef).
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="planted"),
            string_data={"api-key": WANDB_KEY, "aws-secret": AWS_SECRET, "token": BEARER},
        ),
    )
    wandb = {"project": "digits", "apiKeySecretRef": {"name": "planted", "key": "api-key"}}
    pod = _start(custom, core, namespace, _run("leaky", dataset, tracking={"wandb": wandb}))

    # Attempt 1 crashes before writing its summary: the kubelet hands its log tail over instead.
    log_tail = (
        "Traceback (most recent call last):\n"
        f"  env: {{'AWS_SECRET_ACCESS_KEY': '{AWS_SECRET}', 'WANDB_API_KEY': '{WANDB_KEY}'}}\n"
        f"  requests.exceptions.HTTPError: 401 for GET with Authorization: Bearer {BEARER}\n"
        f"wandb: ERROR could not log in with wandb login {WANDB_KEY}\n"
        f"RuntimeError: aws_secret_access_key={AWS_SECRET} rejected\n"
    )
    finish_pod(core, namespace, pod, exit_code=1, message=log_tail)

    def second_attempt() -> dict[str, Any] | None:
        obj = custom.get_namespaced_custom_object(G, V, namespace, "trainingruns", "leaky")
        status = obj.get("status", {})
        return obj if status.get("attempt") == 2 and status.get("phase") == "Running" else None

    wait_for(second_attempt, "attempt 2 to run", 60)
    (pod,) = _running_pods(core, namespace, "leaky-a2")
    # Attempt 2 fails for good, its summary's message quoting the secrets.
    summary = _summary(
        status="Failed",
        exitCode=78,
        reason="InvalidConfig",
        message=f"W&B refused WANDB_API_KEY={WANDB_KEY}; S3 said token: {BEARER}; key {AWS_SECRET}",
    )
    finish_pod(core, namespace, pod, exit_code=78, message=summary)
    done = _wait_phase(custom, namespace, "leaky", "Failed")

    status = done["status"]
    assert [f["attempt"] for f in status["failures"]] == [1, 2]
    assert all("***" in f["message"] for f in status["failures"])  # masked, not dropped
    assert "Traceback" in status["failures"][0]["message"]
    events = wait_for_events(
        core,
        namespace,
        "leaky",
        lambda events: any(e.reason == "AttemptFailed" for e in events),
        "AttemptFailed",
    )
    assert _leaks(json.dumps(status)) == []
    assert _leaks(json.dumps([e.message for e in events])) == []
    assert _leaks(operator.log.read_text()) == []


class _Recorder(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:
        _Recorder.requests.append(self.path)
        self.send_response(403)
        self.end_headers()

    do_HEAD = do_PUT = do_GET  # noqa: N815

    def log_message(self, *_: Any) -> None:
        pass


def test_an_endpoint_off_the_allowlist_gets_no_request(
    operator: OperatorProcess,
    s3: LocalS3,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    # 127.0.0.2 is loopback too, but not on the allow-list the tests give the operator.
    server = http.server.ThreadingHTTPServer(("127.0.0.2", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        create_s3_secret(core, namespace)
        endpoint = f"http://127.0.0.2:{server.server_address[1]}"
        custom.create_namespaced_custom_object(
            G, V, namespace, "datasets", _dataset(s3, "ssrf", "any-bucket", endpointURL=endpoint)
        )
        obj = _wait_dataset_reason(custom, namespace, "ssrf", "EndpointNotAllowed")
    finally:
        server.shutdown()
        server.server_close()
    assert obj["status"]["phase"] == "Failed"
    message = _ready(obj)["message"]
    assert f"127.0.0.2:{server.server_address[1]} is not on the operator's allow-list" in message
    assert "MLOPS_S3_ENDPOINT_ALLOWLIST" in message
    assert _Recorder.requests == []
    events = wait_for(
        lambda: [e for e in core.list_namespaced_event(namespace).items if e.reason == "EndpointNotAllowed"],
        "an EndpointNotAllowed event",
        30,
    )
    assert events[0].type == "Warning"


def test_a_manifest_over_the_cap_is_refused(
    operator: OperatorProcess,
    s3: LocalS3,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    bucket = f"big-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="digits/part-0.npz", Body=b"x" * 64)
    line = b'{"key": "part-0.npz", "size": 64, "sha256": "' + b"0" * 64 + b'"}\n'
    s3.client().put_object(
        Bucket=bucket, Key="digits/manifest.jsonl", Body=line * (MANIFEST_CAP // len(line) + 1)
    )
    create_s3_secret(core, namespace)
    manifest = f"s3://{bucket}/digits/manifest.jsonl"
    custom.create_namespaced_custom_object(
        G, V, namespace, "datasets", _dataset(s3, "big", bucket, manifestURI=manifest)
    )
    obj = _wait_dataset_reason(custom, namespace, "big", "ManifestTooLarge")
    assert obj["status"]["phase"] == "Failed"
    assert f"over the operator's limit of {MANIFEST_CAP} bytes" in _ready(obj)["message"]


def test_workload_emptydirs_have_size_limits(
    operator: OperatorProcess,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    run = _run("sized", dataset, resources={"gpusPerWorker": 1, "memory": "8Gi"})
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
    (pod,) = _running_pods(core, namespace, "sized-a1")
    volumes = core.read_namespaced_pod(pod, namespace).spec.volumes
    empty_dirs = {v.name: v.empty_dir for v in volumes if v.empty_dir is not None}
    assert set(empty_dirs) == {"scratch", "shm"}
    assert {n: d.size_limit for n, d in empty_dirs.items()} == {"scratch": "20Gi", "shm": "4Gi"}
