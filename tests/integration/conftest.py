"""A real control plane for the whole session, a fresh namespace per test."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from mlops_operator.dev.controlplane import (
    KWOK_TOLERATION,
    OPERATOR_SA_USER,
    ControlPlane,
    GpuNodePool,
    free_port,
    kueue_built,
)
from mlops_operator.dev.mlflow import LocalMlflow
from mlops_operator.dev.s3 import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, LOOPBACK_ENDPOINTS, LocalS3
from mlops_operator.timeutil import from_rfc3339
from tests.integration.digits_engine import (
    CompiledEngine,
    copy_trained_model,
    train_and_compile,
    write_compile_output,
)
from tests.integration.operator_rbac import OPERATOR_USERS, operator_identity
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "forbidden_expected: the test makes the operator's identity do what its RBAC refuses"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    # The operator's reads are audited too: tests count what a restart or an idle minute costs, and
    # every request the chart's RBAC refused it fails the test that caused it (no_forbidden_requests).
    # OwnerReferencesPermissionEnforcement (off by default, on in hardened clusters and OpenShift)
    # holds the operator to the owner-reference rules it needs there too.
    plane = ControlPlane(
        node_pools=(GpuNodePool(count=2, gpus_per_node=8),),
        audit_read_users=OPERATOR_USERS,
        apiserver_args=("--enable-admission-plugins=OwnerReferencesPermissionEnforcement",),
        argo_rollouts=True,
        prometheus=True,
        # Kueue's webhooks see every Job create, but it manages only Jobs that name a LocalQueue.
        kueue=kueue_built(),
    )
    plane.start()
    try:
        plane.install_crds(ROOT / "crds")
        yield plane
    finally:
        plane.stop()


def _refused_by_rbac(entry: dict[str, Any]) -> bool:
    """A 403 the operator's permissions caused: the authorizer's "forbid", or the owner-reference
    admission plugin's permission check. Not a quota or a namespace being deleted (admission 403s a
    test may provoke on purpose)."""
    if (entry.get("annotations") or {}).get("authorization.k8s.io/decision") == "forbid":
        return True
    message = str((entry.get("responseStatus") or {}).get("message"))
    return "blockOwnerDeletion" in message or "ownerRef" in message


@pytest.fixture(autouse=True)
def no_forbidden_requests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test in which the apiserver refused the operator anything (HTTP 403 in the audit log):
    the chart's RBAC lacks a rule the code needs."""
    if "control_plane" not in request.fixturenames or request.node.get_closest_marker("forbidden_expected"):
        yield
        return
    plane: ControlPlane = request.getfixturevalue("control_plane")
    offset = plane.audit_log.stat().st_size if plane.audit_log.exists() else 0
    yield
    denied = [
        entry
        for user in OPERATOR_USERS
        for entry in plane.denied_requests(user, offset)
        if _refused_by_rbac(entry)
    ]
    if denied:
        lines = sorted(
            {
                f"{e['user']['username']}: {e['verb']} {e['requestURI'].split('?')[0]}: "
                f"{(e.get('responseStatus') or {}).get('message') or e.get('annotations')}"
                for e in denied
            }
        )
        pytest.fail(
            "the apiserver refused the operator (the chart's RBAC lacks a rule):\n" + "\n".join(lines)
        )


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(control_plane.kubeconfig))


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def custom(api: client.ApiClient) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are refused until the controller-manager has made the namespace's default ServiceAccount.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if any(sa.metadata.name == "default" for sa in core.list_namespaced_service_account(name).items):
            break
        time.sleep(0.2)
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def s3() -> Iterator[LocalS3]:
    with LocalS3() as server:
        yield server


@pytest.fixture(scope="session")
def mlflow_server(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflow]:
    """A real MLflow tracking server (sqlite registry, artifacts in the session's moto S3)."""
    server = LocalMlflow(workdir=tmp_path_factory.mktemp("mlflow"), s3_endpoint_url=s3.endpoint_url)
    s3.client().create_bucket(Bucket=server.artifacts_bucket)
    with server:
        yield server


def create_s3_secret(core: client.CoreV1Api, namespace: str, name: str = "s3-credentials") -> str:
    """The Secret a Dataset's credentialsSecretRef names, with the local S3 server's credentials."""
    core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name=name),
            string_data={
                "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
                "AWS_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
            },
        ),
    )
    return name


@dataclass
class OperatorProcess:
    process: subprocess.Popen[bytes]
    metrics_port: int
    health_port: int
    log: Path

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as response:
            return str(response.read().decode())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_operator(
    control_plane: ControlPlane,
    namespace: str,
    log: Path,
    extra_env: dict[str, str] | None = None,
    *,
    kubeconfig: Path | None = None,
) -> OperatorProcess:
    """`mlopsctl run` as its own process, watching one namespace, as the Helm chart runs it: with a
    token of the chart's ServiceAccount and the chart's RBAC (tests/integration/operator_rbac.py)."""
    kubeconfig = kubeconfig or operator_identity(control_plane).grant(namespace)
    metrics, health = free_port(), free_port()
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "MLOPS_NAMESPACES": json.dumps([namespace]),
        "MLOPS_METRICS_PORT": str(metrics),
        "MLOPS_HEALTH_PORT": str(health),
        "MLOPS_LOG_FORMAT": "json",
        "MLOPS_WORKLOAD_TOLERATIONS": json.dumps([KWOK_TOLERATION]),
        "MLOPS_S3_ENDPOINT_ALLOWLIST": json.dumps(LOOPBACK_ENDPOINTS),
        **(extra_env or {}),
    }
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_operator.cli", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    running = OperatorProcess(process, metrics, health, log)

    def healthy() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the operator exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(healthy, "the operator's /healthz", 30)
    return running


@pytest.fixture
def operator(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[OperatorProcess]:
    running = start_operator(control_plane, namespace, tmp_path / "operator.log")
    try:
        yield running
    finally:
        running.stop()
        if running.process.returncode not in (0, -15):
            print(running.log.read_text()[-5000:])  # shown by pytest when the test failed


@pytest.fixture
def dataset(s3: LocalS3, core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str) -> str:
    """A Ready Dataset named `digits` over a few objects in moto S3."""
    bucket = f"ml-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    for i in range(2):
        s3.client().put_object(Bucket=bucket, Key=f"digits/part-{i}.npz", Body=b"x" * 64)
    create_s3_secret(core, namespace)
    body = _dataset_body(s3, bucket)
    custom.create_namespaced_custom_object("mlops.dev", "v1alpha1", namespace, "datasets", body)
    return bucket


def _dataset_body(s3: LocalS3, bucket: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "Dataset",
        "metadata": {"name": "digits"},
        "spec": {
            "source": {
                "uri": f"s3://{bucket}/digits/",
                "endpointURL": s3.endpoint_url,
                "credentialsSecretRef": {"name": "s3-credentials"},
            }
        },
    }


def operator_requests(
    control_plane: ControlPlane, namespace: str, since: datetime | None = None
) -> list[dict[str, Any]]:
    """The audit entries of every request the operator made in `namespace` (since `since`): its
    writes always, its reads because the session's control plane audits them too."""
    found = []
    for entry in control_plane.audit_entries():
        if entry.get("stage") != "ResponseComplete" or entry["user"]["username"] != OPERATOR_SA_USER:
            continue
        if (entry.get("objectRef") or {}).get("namespace") != namespace:
            continue
        if since is None or from_rfc3339(entry["requestReceivedTimestamp"]) >= since:
            found.append(entry)
    return found


@pytest.fixture(scope="session")
def engine(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> CompiledEngine:
    """A really trained and compiled digits model (and its demo data) in a bucket of its own, shared by
    the serving tests: training it once per session saves half a minute per module."""
    return train_and_compile(s3, f"digits-{uuid.uuid4().hex[:8]}", tmp_path_factory.mktemp("trainer"))


@pytest.fixture
def source(s3: LocalS3, dataset: str, engine: CompiledEngine) -> str:
    """A trained model directory, as the trainer wrote it (the session's really trained one), in the
    `digits` Dataset's bucket: what a ModelVersion's source.artifactURI names."""
    return copy_trained_model(s3, engine, dataset)


@pytest.fixture
def engine_uri(s3: LocalS3, source: str, engine: CompiledEngine) -> str:
    """The compile stage's output for `source` (the engine and its metadata.json) in the same bucket:
    tests that finish a compile Job by hand name it in the Job's result, so registration finds the
    records a real compile leaves."""
    return write_compile_output(s3, engine, source)
