"""Faults of the stores the operator reads and writes (issue 15, "The fault suite"): S3 down while a
Dataset refreshes, the model registry (a real MLflow server) down while a ModelVersion registers.

The session's own S3 and MLflow servers are stopped and started again (same port, same data); a
`finally` brings them back for the tests after these.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.faults import TcpProxy
from mlops_operator.dev.mlflow import LocalMlflow
from mlops_operator.dev.s3 import LocalS3
from tests.integration.conftest import create_s3_secret
from tests.integration.faults.conftest import Healed, kill9, start_fast_operator
from tests.integration.test_modelversion import (
    REGISTRY_ENV,
    _finish_stage,
    _model_name,
    _mv,
    _versions,
    compiled,
    evaluated,
)
from tests.integration.test_modelversion import _wait as _wait_mv
from tests.waiting import wait_for, wait_for_events

G, V = "mlops.dev", "v1alpha1"
# The Dataset retries an outage after half its length, at least 15 s (handlers/dataset.py); the
# ModelVersion at least 5 s: a fault healed must show within these.
DATASET_HEAL_BOUND = 45
REGISTRY_HEAL_BOUND = 45


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})


def _dataset(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, namespace, "datasets", name)  # type: ignore[no-any-return]


def _wait_dataset(
    custom: client.CustomObjectsApi, namespace: str, name: str, reason: str, timeout: float
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = _dataset(custom, namespace, name)
        return obj if _ready(obj).get("reason") == reason else None

    try:
        return wait_for(probe, f"Dataset {name} to have Ready reason {reason}", timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}\nstatus: {_dataset(custom, namespace, name).get('status')}") from None


def test_s3_down_during_a_dataset_refresh_is_source_unavailable_then_ready(
    control_plane: ControlPlane,
    s3: LocalS3,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    heal_record: list[Healed],
):
    bucket = f"flaky-{namespace}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="data/a.bin", Body=b"a" * 10)
    create_s3_secret(core, namespace)
    body = {
        "apiVersion": f"{G}/{V}",
        "kind": "Dataset",
        "metadata": {"name": "flaky"},
        "spec": {
            "source": {
                "uri": f"s3://{bucket}/data/",
                "endpointURL": s3.endpoint_url,
                "credentialsSecretRef": {"name": "s3-credentials"},
            },
            "refreshInterval": "2s",
        },
    }
    operator = start_fast_operator(control_plane, namespace, tmp_path / "operator.log")
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "datasets", body)
        ready = _wait_dataset(custom, namespace, "flaky", "Validated", 60)
        fingerprint = ready["status"]["fingerprint"]
        down_at = time.monotonic()
        s3.stop()
        try:
            down = _wait_dataset(custom, namespace, "flaky", "SourceUnavailable", 30)
            assert down["status"]["phase"] == "Pending"
            assert _ready(down)["message"]
            time.sleep(5)  # an outage of some seconds, retried meanwhile
        finally:
            s3.start()
        back_at = time.monotonic()
        healed = _wait_dataset(custom, namespace, "flaky", "Validated", DATASET_HEAL_BOUND)
        heal_record.append(
            Healed(
                "S3 down during a Dataset refresh",
                "Ready=False SourceUnavailable (phase Pending) and a Warning event, then Ready again",
                back_at - down_at,
                time.monotonic() - back_at,
                "test_s3_down_during_a_dataset_refresh_is_source_unavailable_then_ready",
            )
        )
        assert healed["status"]["phase"] == "Ready"
        assert healed["status"]["fingerprint"] == fingerprint, "the data did not change"
        wait_for_events(
            core, namespace, "flaky",
            lambda events: any(e.reason == "SourceUnavailable" and e.type == "Warning" for e in events),
            "the SourceUnavailable Warning event",
        )  # fmt: skip
        events = core.list_namespaced_event(namespace, field_selector="involvedObject.name=flaky").items
        assert not [e for e in events if e.reason == "FingerprintChanged"], "an outage is not a data change"
    finally:
        operator.stop()
        if not s3.running:
            s3.start()


def _dataset_body(s3: LocalS3, bucket: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {
            "source": {
                "uri": f"s3://{bucket}/data/",
                "endpointURL": s3.endpoint_url,
                "credentialsSecretRef": {"name": "s3-credentials"},
            },
            "refreshInterval": "2s",
        },
    }


# The restarted apiserver refuses for a moment while its RBAC authorizer re-syncs (403): the fault.
@pytest.mark.forbidden_expected
def test_a_dataset_deleted_while_the_operator_is_cut_off_is_forgotten(
    healthy_control_plane: ControlPlane,
    proxy: TcpProxy,
    s3: LocalS3,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    heal_record: list[Healed],
):
    """Issue 15 item 1: an object deleted during a gap in the watch must be forgotten after the
    re-list. The apiserver restarts during the gap, so the operator cannot resume its watches where
    they stopped (410 Gone: its resourceVersions predate the new watch cache) and must re-list. Old
    operator: kopf's re-list emitted no deletion, and the Dataset lived on in the cache (counted in
    mlops_objects, listed from S3 every refresh). A new Dataset of the same name is then its own."""
    control_plane = healthy_control_plane
    old_bucket, new_bucket = f"gone-{namespace}", f"new-{namespace}"
    for bucket, size in ((old_bucket, 10), (new_bucket, 20)):
        s3.client().create_bucket(Bucket=bucket)
        s3.client().put_object(Bucket=bucket, Key="data/a.bin", Body=b"a" * size)
    create_s3_secret(core, namespace)
    operator = start_fast_operator(
        control_plane, namespace, tmp_path / "operator.log", proxy=proxy, MLOPS_RESYNC_SECONDS="0"
    )
    try:
        body = _dataset_body(s3, old_bucket, "gap")
        custom.create_namespaced_custom_object(G, V, namespace, "datasets", body)
        _wait_dataset(custom, namespace, "gap", "Validated", 60)
        wait_for(
            lambda: 'mlops_objects{kind="Dataset",phase="Ready"} 1.0' in operator.metrics(),
            "the operator to count the Ready Dataset",
            10,
        )
        cut_at = time.monotonic()
        with proxy.cut_for(0):
            custom.delete_namespaced_custom_object(G, V, namespace, "datasets", "gap")

            def gone() -> bool:
                try:
                    _dataset(custom, namespace, "gap")
                except client.ApiException as error:
                    return error.status == 404
                return False

            wait_for(gone, "the Dataset to be deleted (no finalizer holds a Dataset)", 10)
            control_plane.restart_apiserver()
        healed_at = time.monotonic()

        def counted() -> list[str]:
            lines = operator.metrics().splitlines()
            return [line for line in lines if line.startswith('mlops_objects{kind="Dataset"')]

        try:
            wait_for(lambda: not counted(), "the operator to forget the Dataset deleted", DATASET_HEAL_BOUND)
        except AssertionError as error:
            raise AssertionError(f"{error}; still counted: {counted()}") from None
        heal_record.append(
            Healed(
                "a Dataset deleted while the operator is cut off (and the apiserver restarts)",
                "it is forgotten once the operator re-lists (no more S3 listing of it)",
                healed_at - cut_at,
                time.monotonic() - healed_at,
                "test_a_dataset_deleted_while_the_operator_is_cut_off_is_forgotten",
            )
        )
        body = _dataset_body(s3, new_bucket, "gap")
        custom.create_namespaced_custom_object(G, V, namespace, "datasets", body)
        fresh = _wait_dataset(custom, namespace, "gap", "Validated", DATASET_HEAL_BOUND)
        assert fresh["status"]["totalBytes"] == 20, "the new Dataset's own data"
    finally:
        operator.stop()


def test_operator_killed_at_random_points_of_a_dataset_check(
    control_plane: ControlPlane,
    s3: LocalS3,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    rng: random.Random,
    heal_record: list[Healed],
):
    """kill -9 at a random moment of a Dataset's first check (listing, fingerprinting, the manifest's
    multipart upload, the status patch): the next operator finishes it; one manifest, the right
    fingerprint."""
    bucket = f"k9-{namespace}"
    s3.client().create_bucket(Bucket=bucket)
    for i in range(50):
        s3.client().put_object(Bucket=bucket, Key=f"data/part-{i:03}.bin", Body=b"x" * (i + 1))
    create_s3_secret(core, namespace)
    logs = iter(tmp_path / f"operator-{i}.log" for i in range(10))
    operator = start_fast_operator(control_plane, namespace, next(logs))
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "datasets", _dataset_body(s3, bucket, "k9"))
        time.sleep(rng.uniform(0, 1.0))
        kill9(operator)
        restarted = time.monotonic()
        operator = start_fast_operator(control_plane, namespace, next(logs))
        ready = _wait_dataset(custom, namespace, "k9", "Validated", DATASET_HEAL_BOUND)
        heal_record.append(
            Healed(
                "operator kill -9 during a Dataset's first check",
                "nothing: the next operator finishes the check; one manifest",
                0.0,
                time.monotonic() - restarted,
                "test_operator_killed_at_random_points_of_a_dataset_check",
            )
        )
        assert ready["status"]["objectCount"] == 50
        assert ready["status"]["totalBytes"] == sum(range(1, 51))
        listed = s3.client().list_objects_v2(Bucket=bucket, Prefix="data/.mlops/").get("Contents", [])
        assert [o["Key"] for o in listed] == [ready["status"]["manifestURI"].split(f"{bucket}/", 1)[1]]
    finally:
        operator.stop()


def test_registry_down_while_registering_is_registry_unavailable_then_one_version(
    control_plane: ControlPlane,
    mlflow_server: LocalMlflow,
    source: str,
    engine_uri: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    heal_record: list[Healed],
):
    model = _model_name()
    operator = start_fast_operator(control_plane, namespace, tmp_path / "operator.log", **REGISTRY_ENV)
    try:
        body = _mv("reg", source, mlflow_server)
        body["spec"]["registry"]["collection"] = model
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
        _finish_stage(core, namespace, "reg-compile-a1", compiled(engine_uri))
        down_at = time.monotonic()
        mlflow_server.stop()
        try:
            _finish_stage(core, namespace, "reg-evaluate-a1", evaluated())
            down = _wait_mv(custom, namespace, "reg", "Registering", "RegistryUnavailable")
            uid = down["metadata"]["uid"]
            wait_for_events(
                core, namespace, "reg",
                lambda events: any(e.reason == "RegistryUnavailable" and e.type == "Warning" for e in events),
                "the RegistryUnavailable Warning event",
            )  # fmt: skip
            time.sleep(3)  # retried meanwhile
        finally:
            mlflow_server.start()
        back_at = time.monotonic()
        ready = _wait_mv(custom, namespace, "reg", "Ready", timeout=REGISTRY_HEAL_BOUND)
        heal_record.append(
            Healed(
                "model registry (MLflow) down while a ModelVersion registers",
                "phase Registering, Ready=False RegistryUnavailable and a Warning event, then Ready with one "
                "registry version",
                back_at - down_at,
                time.monotonic() - back_at,
                "test_registry_down_while_registering_is_registry_unavailable_then_one_version",
            )
        )
        assert ready["status"]["registry"]["version"] == "1"
        assert len(_versions(mlflow_server, uid)) == 1, "registered once"
        assert set(_jobs(core, namespace)) <= {"reg-compile-a1", "reg-evaluate-a1"}, "one attempt each"
        time.sleep(3)  # later retries (if any were still queued) must not register again
        assert len(_versions(mlflow_server, uid)) == 1
    finally:
        operator.stop()
        mlflow_server.start()  # a no-op when it runs


def test_operator_killed_at_random_points_of_a_modelversion(
    control_plane: ControlPlane,
    mlflow_server: LocalMlflow,
    source: str,
    engine_uri: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    rng: random.Random,
    heal_record: list[Healed],
):
    """kill -9 at a random moment after each step: the ModelVersion created (the compile Job being
    made), the compile finished (the evaluate Job being made), the evaluation finished (the registry
    call in flight). Each new operator takes over: one Job per stage, one registry version."""
    model = _model_name()
    logs = iter(tmp_path / f"operator-{i}.log" for i in range(10))

    def start() -> Any:
        return start_fast_operator(control_plane, namespace, next(logs), **REGISTRY_ENV)

    operator = start()
    try:
        body = _mv("k9", source, mlflow_server)
        body["spec"]["registry"]["collection"] = model
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", body)
        time.sleep(rng.uniform(0, 1.5))
        kill9(operator)
        operator = start()
        _finish_stage(core, namespace, "k9-compile-a1", compiled(engine_uri))
        time.sleep(rng.uniform(0, 1.0))
        kill9(operator)
        operator = start()
        _finish_stage(core, namespace, "k9-evaluate-a1", evaluated())
        time.sleep(rng.uniform(0, 1.5))
        kill9(operator)
        restarted = time.monotonic()
        operator = start()
        ready = _wait_mv(custom, namespace, "k9", "Ready", timeout=REGISTRY_HEAL_BOUND)
        heal_record.append(
            Healed(
                "operator kill -9 (3 times along a ModelVersion)",
                "nothing: the next operator takes over; one Job per stage, one registry version",
                0.0,
                time.monotonic() - restarted,
                "test_operator_killed_at_random_points_of_a_modelversion",
            )
        )
        assert ready["status"]["registry"]["version"] == "1"
        assert len(_versions(mlflow_server, ready["metadata"]["uid"])) == 1, "registered once"
        assert set(_jobs(core, namespace)) <= {"k9-compile-a1", "k9-evaluate-a1"}, "one attempt each"
    finally:
        operator.stop()


def _jobs(core: client.CoreV1Api, namespace: str) -> list[str]:
    return [j.metadata.name for j in client.BatchV1Api(core.api_client).list_namespaced_job(namespace).items]
