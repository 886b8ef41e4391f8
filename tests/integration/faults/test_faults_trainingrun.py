"""Faults during a TrainingRun, on the real local control plane (issue 15, "The fault suite").

Each test breaks something between the operator and the cluster while a run is in flight, lets the
run's pod finish meanwhile (the change the operator must not lose), heals the fault, and asserts the
end state, exactly one Job for the attempt, and a bounded time to converge, which it records.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.faults import TcpProxy
from mlops_operator.dev.pods import finish_pod
from tests.integration.faults.conftest import Healed, kill9, start_fast_operator
from tests.integration.test_trainingrun import SUCCESS, G, V, _get, _run, _running_pods, _wait_phase
from tests.waiting import wait_for

CUT_SECONDS = 20
# After a fault ends, the run must have converged within this long: the informers' and kopf's
# reconnect backoff, one re-list and one reconcile.
HEAL_BOUND = 45


def _jobs(core: client.CoreV1Api, namespace: str, run: str) -> list[str]:
    batch = client.BatchV1Api(core.api_client)
    jobs = batch.list_namespaced_job(namespace, label_selector=f"mlops.dev/trainingrun={run}").items
    return sorted(j.metadata.name for j in jobs)


def _wait_job_complete(core: client.CoreV1Api, namespace: str, job: str, timeout: float) -> None:
    batch = client.BatchV1Api(core.api_client)
    wait_for(
        lambda: batch.read_namespaced_job(job, namespace).status.succeeded,
        f"Job {job} to complete while the operator cannot see it",
        timeout,
    )


def _assert_succeeded_once(
    custom: client.CustomObjectsApi, core: client.CoreV1Api, namespace: str, run: str
) -> None:
    status = _get(custom, namespace, run)["status"]
    assert status["phase"] == "Succeeded"
    assert status["attempt"] == 1, "a fault is not a failed attempt"
    assert status["metrics"] == {"accuracy": 0.971, "loss": 0.12}
    assert _jobs(core, namespace, run) == [f"{run}-a1"], "one Job for the one attempt"


def test_operator_cut_off_from_the_apiserver_while_the_pod_completes(
    control_plane: ControlPlane,
    proxy: TcpProxy,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    heal_record: list[Healed],
):
    """Issue 15 item 1, the headline: the watches break, the Job completes while the operator cannot
    see it, and after the cut the re-list must wake the run. The resync is off, so nothing but the
    re-list can wake it. Old engine: the re-list reported SYNC, which woke nobody; Running forever.

    Also caught here (about 1 run in 3 on 8299013): when the jobs informer re-lists before the pods
    informer, the run is marked Succeeded from the Job's status while the cached pod has no
    termination message yet: metrics {}, no modelURI, and a finished run is never looked at again.
    A Job's success must not be read without its pod's result (read the pods through, or wait)."""
    operator = start_fast_operator(
        control_plane, namespace, tmp_path / "operator.log", proxy=proxy, MLOPS_RESYNC_SECONDS="0"
    )
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("cut", dataset))
        _wait_phase(custom, namespace, "cut", "Running")
        (pod,) = _running_pods(core, namespace, "cut-a1")
        cut_at = time.monotonic()
        open_before = proxy.open_connections()
        with proxy.cut_for(CUT_SECONDS):
            print(f"cut {open_before} connection(s) of the operator")
            assert open_before > 0
            assert proxy.open_connections() == 0
            finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
            _wait_job_complete(core, namespace, "cut-a1", CUT_SECONDS)
            assert _get(custom, namespace, "cut")["status"]["phase"] == "Running"
        healed_at = time.monotonic()
        _wait_phase(custom, namespace, "cut", "Succeeded", timeout=HEAL_BOUND)
        heal_record.append(
            Healed(
                "operator cut off from the apiserver (TCP reset, 20 s)",
                "Running until the cut heals, then Succeeded",
                healed_at - cut_at,
                time.monotonic() - healed_at,
                "test_operator_cut_off_from_the_apiserver_while_the_pod_completes",
            )
        )
        _assert_succeeded_once(custom, core, namespace, "cut")
        assert operator.process.poll() is None, "the operator rode the cut out"
        assert proxy.refused > 0, "the operator tried to reconnect while cut off"
    finally:
        operator.stop()


# A restarted apiserver answers /readyz before its RBAC authorizer has read every binding again: for a
# moment it refuses the operator's watches (403). That is the fault, not a rule the chart lacks.
@pytest.mark.forbidden_expected
def test_apiserver_restart_while_the_pod_completes(
    healthy_control_plane: ControlPlane,
    proxy: TcpProxy,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    heal_record: list[Healed],
):
    """The apiserver restarts (every watch breaks; its watch cache starts afresh from etcd, so the
    operator's resourceVersions are too old: 410, a re-list) and the pod finishes before the operator
    has reconnected. The operator reaches the apiserver through the proxy, kept cut until the Job has
    completed, so the completion can only be learnt from the re-list (the resync is off). Old engine:
    Running forever."""
    plane = healthy_control_plane
    operator = start_fast_operator(
        plane, namespace, tmp_path / "operator.log", proxy=proxy, MLOPS_RESYNC_SECONDS="0"
    )
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("apis", dataset))
        _wait_phase(custom, namespace, "apis", "Running")
        (pod,) = _running_pods(core, namespace, "apis-a1")
        started = time.monotonic()
        with proxy.cut_for(0):
            plane.restart_apiserver(down_for=3)
            finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
            _wait_job_complete(core, namespace, "apis-a1", HEAL_BOUND)
        back = time.monotonic()
        _wait_phase(custom, namespace, "apis", "Succeeded", timeout=HEAL_BOUND)
        heal_record.append(
            Healed(
                "kube-apiserver restart (down 3 s; the pod completes before the operator reconnects)",
                "kubectl fails while it is down; the run is Running until the operator re-lists, then "
                "Succeeded",
                back - started,
                time.monotonic() - back,
                "test_apiserver_restart_while_the_pod_completes",
            )
        )
        _assert_succeeded_once(custom, core, namespace, "apis")
        assert operator.process.poll() is None
    finally:
        operator.stop()


def test_etcd_restart_while_the_pod_completes(
    healthy_control_plane: ControlPlane,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    heal_record: list[Healed],
):
    """etcd is killed (the apiserver stays up, failing every read and write) and comes back on its data
    directory; the pod finishes right after."""
    plane = healthy_control_plane
    operator = start_fast_operator(plane, namespace, tmp_path / "operator.log", MLOPS_RESYNC_SECONDS="0")
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("etcd", dataset))
        _wait_phase(custom, namespace, "etcd", "Running")
        (pod,) = _running_pods(core, namespace, "etcd-a1")
        started = time.monotonic()
        plane.restart_etcd(kill=True, down_for=5)
        finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
        back = time.monotonic()
        _wait_phase(custom, namespace, "etcd", "Succeeded", timeout=HEAL_BOUND)
        heal_record.append(
            Healed(
                "etcd killed and restarted (down 5 s)",
                "the apiserver answers errors meanwhile; the run then Succeeded",
                back - started,
                time.monotonic() - back,
                "test_etcd_restart_while_the_pod_completes",
            )
        )
        _assert_succeeded_once(custom, core, namespace, "etcd")
        assert operator.process.poll() is None
    finally:
        operator.stop()


def test_operator_killed_at_random_points_of_a_run(
    control_plane: ControlPlane,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    rng: random.Random,
    heal_record: list[Healed],
):
    """kill -9 at a random moment of each step: right after the run is created (before, during or
    after the Job's create and the status patch), while it runs, right after its pod finished. Each
    time a new operator takes over: one Job, one attempt, Succeeded."""
    logs = iter(tmp_path / f"operator-{i}.log" for i in range(10))
    operator = start_fast_operator(control_plane, namespace, next(logs))
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("k9", dataset))
        time.sleep(rng.uniform(0, 1.5))
        kill9(operator)
        operator = start_fast_operator(control_plane, namespace, next(logs))
        _wait_phase(custom, namespace, "k9", "Running")
        time.sleep(rng.uniform(0, 0.5))
        kill9(operator)
        operator = start_fast_operator(control_plane, namespace, next(logs))
        (pod,) = _running_pods(core, namespace, "k9-a1")
        finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
        time.sleep(rng.uniform(0, 1.0))
        kill9(operator)
        restarted = time.monotonic()
        operator = start_fast_operator(control_plane, namespace, next(logs))
        _wait_phase(custom, namespace, "k9", "Succeeded", timeout=HEAL_BOUND)
        heal_record.append(
            Healed(
                "operator kill -9 (3 times along a run)",
                "nothing: the next operator takes over; one Job, one attempt",
                0.0,
                time.monotonic() - restarted,
                "test_operator_killed_at_random_points_of_a_run",
            )
        )
        _assert_succeeded_once(custom, core, namespace, "k9")
    finally:
        operator.stop()


def test_a_job_deleted_by_hand_mid_run_is_put_back_not_left_running(
    control_plane: ControlPlane,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    heal_record: list[Healed],
):
    """Someone deletes the running attempt's Job (kubectl delete job: background propagation). The
    run must not go on saying Running over nothing: the attempt's Job is created again (same
    attempt, from the pinned spec) and the run finishes with it."""
    operator = start_fast_operator(control_plane, namespace, tmp_path / "operator.log")
    batch = client.BatchV1Api(core.api_client)
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("hand", dataset))
        _wait_phase(custom, namespace, "hand", "Running")
        first_uid = batch.read_namespaced_job("hand-a1", namespace).metadata.uid
        deleted = time.monotonic()
        batch.delete_namespaced_job("hand-a1", namespace, propagation_policy="Background")

        def replaced() -> str | None:
            try:
                job = batch.read_namespaced_job("hand-a1", namespace)
            except client.ApiException as error:
                if error.status == 404:
                    return None
                raise
            return str(job.metadata.uid) if job.metadata.uid != first_uid else None

        new_uid = wait_for(replaced, "the deleted Job to be created again", HEAL_BOUND)

        def new_pod() -> str | None:
            selector = f"batch.kubernetes.io/controller-uid={new_uid}"
            pods = core.list_namespaced_pod(namespace, label_selector=selector).items
            return next((p.metadata.name for p in pods if p.status.phase == "Running"), None)

        pod = wait_for(new_pod, "the new Job's pod to run", HEAL_BOUND)
        _wait_phase(custom, namespace, "hand", "Running", timeout=HEAL_BOUND)
        heal_record.append(
            Healed(
                "a TrainingRun's Job deleted by hand",
                "Starting, then Running again on a new Job (same attempt)",
                0.0,
                time.monotonic() - deleted,
                "test_a_job_deleted_by_hand_mid_run_is_put_back_not_left_running",
            )
        )
        finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
        _wait_phase(custom, namespace, "hand", "Succeeded", timeout=HEAL_BOUND)
        _assert_succeeded_once(custom, core, namespace, "hand")
    finally:
        operator.stop()


def test_a_rendezvous_service_deleted_by_hand_mid_run_is_put_back(
    control_plane: ControlPlane,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
    heal_record: list[Healed],
):
    """Issue 15 item 2 for the TrainingRun's other child kind: the headless Service a distributed
    run's workers find each other through. Deleted by hand while the run is Running, it must come
    back (a worker that restarts could not resolve its master otherwise); the run is not disturbed."""
    operator = start_fast_operator(control_plane, namespace, tmp_path / "operator.log")
    run = _run("ddp", dataset, distributed={"nodes": 2, "procsPerNode": 1}, resources={"gpusPerWorker": 1})
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
        _wait_phase(custom, namespace, "ddp", "Running")
        first_uid = core.read_namespaced_service("ddp-rdzv", namespace).metadata.uid
        deleted = time.monotonic()
        core.delete_namespaced_service("ddp-rdzv", namespace)

        def replaced() -> str | None:
            try:
                service = core.read_namespaced_service("ddp-rdzv", namespace)
            except client.ApiException as error:
                if error.status == 404:
                    return None
                raise
            return str(service.metadata.uid) if service.metadata.uid != first_uid else None

        wait_for(replaced, "the deleted rendezvous Service to be created again", HEAL_BOUND)
        heal_record.append(
            Healed(
                "a distributed TrainingRun's rendezvous Service deleted by hand",
                "the Service is created again; the run goes on",
                0.0,
                time.monotonic() - deleted,
                "test_a_rendezvous_service_deleted_by_hand_mid_run_is_put_back",
            )
        )
        assert core.read_namespaced_service("ddp-rdzv", namespace).spec.cluster_ip == "None"
        for pod in _running_pods(core, namespace, "ddp-a1", count=2):
            finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
        _wait_phase(custom, namespace, "ddp", "Succeeded", timeout=HEAL_BOUND)
        _assert_succeeded_once(custom, core, namespace, "ddp")
    finally:
        operator.stop()
