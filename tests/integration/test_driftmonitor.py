"""DriftMonitor on the real control plane: a check Job per new current-data fingerprint, its result
into status, conditions, events and metrics, exactly one Job per check across a kill -9.

Most tests finish each check's pod by hand (the pods run on simulated kwok nodes) with a result
summary crafted per mlops_contract.drift, as the ModelVersion tests finish compile and evaluate Jobs:
they test the monitor's decisions, fast. The last test runs the real workload (`mlops-trainer drift`,
Evidently, the session's really trained model) through the local pod runner, with the environment
the operator built.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from mlops_contract import drift, envvars
from prometheus_client.parser import text_string_to_metric_families

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.runner import LocalPodRunner
from mlops_operator.dev.s3 import DEV_REGION, LocalS3
from tests.integration.conftest import _dataset_body, create_s3_secret, start_operator
from tests.integration.digits_engine import (
    TRAINER,
    CompiledEngine,
    copy_trained_model,
    create_digits_dataset,
    trainer_env,
    write_compile_output,
)
from tests.integration.test_modelversion import _finish_stage, _summary, compiled, evaluated
from tests.integration.test_trainingrun import SUCCESS, _run
from tests.waiting import wait_for, wait_for_events

G, V = "mlops.dev", "v1alpha1"


def _get(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, namespace, plural, name)  # type: ignore[no-any-return]


def _condition(obj: dict[str, Any], type_: str = "Ready") -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == type_), {})


def _wait_phase(
    custom: client.CustomObjectsApi, namespace: str, plural: str, name: str, phase: str
) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = _get(custom, namespace, plural, name)
        return obj if obj.get("status", {}).get("phase") == phase else None

    try:
        return wait_for(probe, f"{plural} {name} to be {phase}", 60)
    except AssertionError as error:
        status = _get(custom, namespace, plural, name).get("status")
        raise AssertionError(f"{error}\nstatus: {json.dumps(status, indent=1)}") from None


def _jobs(batch: client.BatchV1Api, namespace: str) -> list[str]:
    jobs = batch.list_namespaced_job(namespace, label_selector="mlops.dev/driftmonitor=dm").items
    return sorted(j.metadata.name for j in jobs if not j.metadata.deletion_timestamp)


def _env(job: Any) -> dict[str, Any]:
    container = job.spec.template.spec.containers[0]
    return {e.name: e.value if e.value is not None else e.value_from for e in container.env}


def _check_summary(drifted: bool, columns: list[tuple[str, float, bool]], report: str) -> str:
    entries = [
        {
            drift.NAME: n,
            drift.COLUMN_METHOD: "wasserstein",
            drift.SCORE: s,
            drift.THRESHOLD: 0.1,
            drift.COLUMN_DRIFTED: d,
        }
        for n, s, d in columns
    ]
    count = sum(d for _, _, d in columns)
    return _summary(
        "drift",
        artifacts={drift.ARTIFACT_REPORT: report},
        drift={
            drift.DRIFTED: drifted,
            drift.SHARE: count / len(columns),
            drift.THRESHOLD: 0.5,
            drift.COLUMNS_FIELD: entries,
            drift.COLUMN_COUNT: len(columns),
            drift.DRIFTED_COUNT: count,
            drift.REFERENCE_ROWS: 100,
            drift.CURRENT_ROWS: 50,
        },
    )


def _landed(s3: LocalS3, bucket: str, prefix: str) -> dict[str, Any]:
    for i in range(2):
        s3.client().put_object(Bucket=bucket, Key=f"{prefix}/part-{i}.npz", Body=f"{prefix}{i}".encode() * 16)
    body = _dataset_body(s3, bucket)
    body["metadata"] = {"name": "landed"}
    body["spec"]["source"]["uri"] = f"s3://{bucket}/{prefix}/"
    return body


def _served_model(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, namespace: str, bucket: str
) -> tuple[dict[str, Any], dict[str, Any], str]:
    """A Ready ModelVersion `mv` with lineage: TrainingRun r1 on `digits`, compile and evaluate
    finished by hand. Returns the run, the version and the trained model's prefix."""
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", _run("r1", bucket))
    _finish_stage(core, namespace, "r1-a1", SUCCESS)
    run = _wait_phase(custom, namespace, "trainingruns", "r1", "Succeeded")
    mv = {
        "apiVersion": f"{G}/{V}",
        "kind": "ModelVersion",
        "metadata": {"name": "mv"},
        "spec": {"modelName": "digits", "source": {"trainingRunRef": {"name": "r1"}}},
    }
    custom.create_namespaced_custom_object(G, V, namespace, "modelversions", mv)
    _finish_stage(core, namespace, "mv-compile-a1", compiled(f"s3://{bucket}/engine/model.onnx"))
    _finish_stage(core, namespace, "mv-evaluate-a1", evaluated())
    ready = _wait_phase(custom, namespace, "modelversions", "mv", "Ready")
    return run, ready, ready["status"]["lineage"]["sourceURI"].rstrip("/") + "/"


def _monitor(
    s3: LocalS3, custom: client.CustomObjectsApi, namespace: str, bucket: str, **spec: Any
) -> dict[str, Any]:
    """The current Dataset `landed` (Ready) and DriftMonitor `dm` of `mv` on it; returns the Dataset."""
    custom.create_namespaced_custom_object(G, V, namespace, "datasets", _landed(s3, bucket, "landed-1"))
    landed = _wait_phase(custom, namespace, "datasets", "landed", "Ready")
    monitor = {
        "apiVersion": f"{G}/{V}",
        "kind": "DriftMonitor",
        "metadata": {"name": "dm"},
        "spec": {"modelVersionRef": {"name": "mv"}, "currentDatasetRef": {"name": "landed"}, **spec},
    }
    custom.create_namespaced_custom_object(G, V, namespace, "driftmonitors", monitor)
    return landed


def test_checks_run_per_new_fingerprint_report_drift_and_survive_a_kill(
    control_plane: ControlPlane,
    s3: LocalS3,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    batch = client.BatchV1Api(core.api_client)
    bucket = dataset
    operator = start_operator(control_plane, namespace, tmp_path / "operator.log")
    try:
        run, mv, model_uri = _served_model(core, custom, namespace, bucket)
        engine = f"s3://{bucket}/engine/model.onnx"
        landed = _monitor(s3, custom, namespace, bucket, method="wasserstein", columnThreshold=0.1)

        # One check Job, with the contract's environment.
        wait_for(lambda: _jobs(batch, namespace) == ["dm-check-1-a1"], "the first check Job", 60)
        env = _env(batch.read_namespaced_job("dm-check-1-a1", namespace))
        assert env[envvars.DATASET_URI] == f"s3://{bucket}/landed-1/"
        assert env[drift.CURRENT_FINGERPRINT] == landed["status"]["fingerprint"]
        assert env[drift.REFERENCE_DATASET_URI] == f"s3://{bucket}/digits/"
        assert env[drift.REFERENCE_FINGERPRINT] == run["status"]["datasetFingerprint"]
        assert mv["status"]["engine"]["uri"] == engine
        assert env[drift.ENGINE_URI] == engine.removesuffix("model.onnx")  # the compile output's prefix
        assert env[drift.REFERENCE_URI] == f"{model_uri}drift-reference/"
        assert env[drift.OUTPUT_URI].startswith(f"{model_uri}drift/dm-")
        assert env[drift.OUTPUT_URI].endswith("/check-1/")
        assert env[drift.METHOD] == "wasserstein"
        assert env[envvars.AWS_ACCESS_KEY_ID].secret_key_ref.name == "s3-credentials"
        checking = _wait_phase(custom, namespace, "driftmonitors", "dm", "Checking")
        assert checking["status"]["check"]["trigger"] == "FirstCheck"

        # A drifted result: Drifted=True with the columns and the report, a Warning event, metrics.
        report = f"{env[drift.OUTPUT_URI]}{drift.REPORT_FILE}"
        columns = [("brightness", 0.42, True), ("entropy", 0.3, True), ("contrast", 0.01, False)]
        _finish_stage(core, namespace, "dm-check-1-a1", _check_summary(True, columns, report))
        drifted = _wait_phase(custom, namespace, "driftmonitors", "dm", "Drifted")
        status = drifted["status"]
        assert _condition(drifted, "Drifted")["status"] == "True"
        assert _condition(drifted)["status"] == "True"
        assert [c["name"] for c in status["columns"] if c["drifted"]] == ["brightness", "entropy"]
        assert status["columns"][0] == {
            "name": "brightness",
            "method": "wasserstein",
            "score": 0.42,
            "threshold": 0.1,
            "drifted": True,
        }
        assert status["reportURI"] == report
        assert status["driftShare"] == round(2 / 3, 6)
        assert status["currentFingerprint"] == landed["status"]["fingerprint"]
        assert status["referenceFingerprint"] == run["status"]["datasetFingerprint"]
        assert status["lastCheck"]["number"] == 1
        assert "check" not in status
        events = wait_for_events(
            core,
            namespace,
            "dm",
            lambda es: any(e.reason == "DriftDetected" and e.type == "Warning" for e in es),
            "a DriftDetected Warning",
        )
        assert sum(e.reason == "DriftDetected" for e in events) == 1
        samples = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(operator.metrics())
            for sample in family.samples
        }
        ours = (("name", "dm"), ("namespace", namespace))
        assert samples[("mlops_drift_share", ours)] == round(2 / 3, 6)
        assert samples[("mlops_drift_drifted", ours)] == 1
        brightness = tuple(sorted((*ours, ("column", "brightness"), ("method", "wasserstein"))))
        assert samples[("mlops_drift_column_score", brightness)] == 0.42
        scored = {dict(k[1])["column"] for k in samples if k[0] == "mlops_drift_column_score"}
        assert scored == {"brightness", "entropy", "contrast"}
        # The finished Job is cleaned up, and nothing new is due: no second Job.
        wait_for(lambda: _jobs(batch, namespace) == [] or None, "the finished check Job to go", 30)
        time.sleep(3)
        assert _jobs(batch, namespace) == []

        # New data lands: exactly one new check, also across an operator kill -9.
        patch = {"spec": {"source": {"uri": f"s3://{bucket}/landed-2/"}}}
        _landed(s3, bucket, "landed-2")
        custom.patch_namespaced_custom_object(G, V, namespace, "datasets", "landed", patch)
        wait_for(lambda: _jobs(batch, namespace) == ["dm-check-2-a1"], "the second check Job", 60)
        operator.process.kill()
        operator.process.wait(10)
        operator = start_operator(control_plane, namespace, tmp_path / "operator-2.log")
        time.sleep(3)
        assert _jobs(batch, namespace) == ["dm-check-2-a1"]
        second = _get(custom, namespace, "driftmonitors", "dm")
        assert second["status"]["check"]["trigger"] == "NewData"
        new_fingerprint = _get(custom, namespace, "datasets", "landed")["status"]["fingerprint"]
        assert new_fingerprint != landed["status"]["fingerprint"]
        assert (
            _env(batch.read_namespaced_job("dm-check-2-a1", namespace))[drift.CURRENT_FINGERPRINT]
            == new_fingerprint
        )

        # A quiet result: Drifted turns False with no Warning, the columns follow.
        quiet = [("brightness", 0.02, False), ("entropy", 0.01, False)]
        _finish_stage(core, namespace, "dm-check-2-a1", _check_summary(False, quiet, report))
        calm = _wait_phase(custom, namespace, "driftmonitors", "dm", "NoDrift")
        assert _condition(calm, "Drifted")["status"] == "False"
        assert calm["status"]["lastCheck"]["number"] == 2
        assert calm["status"]["currentFingerprint"] == new_fingerprint
        assert calm["status"].get("driftedColumns") is None
        wait_for(lambda: _jobs(batch, namespace) == [] or None, "the second check Job to go", 30)
        time.sleep(3)
        assert _jobs(batch, namespace) == []
        events = list(core.list_namespaced_event(namespace, field_selector="involvedObject.name=dm").items)
        assert sum(e.reason == "DriftDetected" for e in events) == 1
        assert not [e for e in events if e.type == "Warning" and e.reason != "DriftDetected"]
    finally:
        operator.stop()


def test_a_failed_check_is_retried_then_reported_and_a_deleted_monitor_leaves_no_series(
    control_plane: ControlPlane,
    s3: LocalS3,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    batch = client.BatchV1Api(core.api_client)
    operator = start_operator(control_plane, namespace, tmp_path / "operator.log")
    try:
        _served_model(core, custom, namespace, dataset)
        _monitor(s3, custom, namespace, dataset)
        # A retryable failure (S3 blip: the workload says retryable): a second attempt after backoff.
        blip = _summary(
            "drift", status="Failed", retryable=True, exitCode=75, reason="S3Unavailable", message="blip"
        )
        _finish_stage(core, namespace, "dm-check-1-a1", blip, exit_code=75)

        def backoff() -> dict[str, Any] | None:
            obj = _get(custom, namespace, "driftmonitors", "dm")
            return obj if _condition(obj).get("reason") == "BackoffBeforeRetry" else None

        waiting = wait_for(backoff, "the check to back off before its retry", 60)
        assert waiting["status"]["phase"] == "Checking"
        assert waiting["status"]["check"]["attempt"] == 2
        wait_for(lambda: "dm-check-1-a2" in _jobs(batch, namespace), "attempt 2's Job", 60)
        # A permanent failure: Failed, Ready=False with the workload's reason, a CheckFailed Warning.
        bad = _summary("drift", status="Failed", exitCode=65, reason="InvalidData", message="no images")
        _finish_stage(core, namespace, "dm-check-1-a2", bad, exit_code=65)
        failed = _wait_phase(custom, namespace, "driftmonitors", "dm", "Failed")
        assert (_condition(failed)["status"], _condition(failed)["reason"]) == ("False", "InvalidData")
        assert "no images" in _condition(failed)["message"]
        assert failed["status"]["lastCheck"]["outcome"] == "Failed"
        assert _condition(failed, "Drifted") == {}  # nothing was ever measured
        wait_for_events(
            core,
            namespace,
            "dm",
            lambda es: any(e.reason == "CheckFailed" and e.type == "Warning" for e in es),
            "a CheckFailed Warning",
        )
        # Not re-run until something changes; the finished Jobs are deleted.
        wait_for(lambda: _jobs(batch, namespace) == [] or None, "the failed check's Jobs to go", 30)
        time.sleep(3)
        assert _jobs(batch, namespace) == []

        # A spec change of the check's fields starts a new check (SpecChanged), which succeeds.
        patch = {"spec": {"driftShareThreshold": 0.3}}
        custom.patch_namespaced_custom_object(G, V, namespace, "driftmonitors", "dm", patch)
        wait_for(lambda: _jobs(batch, namespace) == ["dm-check-2-a1"], "the SpecChanged check's Job", 60)
        env = _env(batch.read_namespaced_job("dm-check-2-a1", namespace))
        assert env[drift.SHARE_THRESHOLD] == "0.3"
        columns = [("brightness", 0.5, True)]
        _finish_stage(core, namespace, "dm-check-2-a1", _check_summary(True, columns, "s3://r/report.html"))
        drifted = _wait_phase(custom, namespace, "driftmonitors", "dm", "Drifted")
        assert drifted["status"]["lastCheck"]["trigger"] == "SpecChanged"
        assert drifted["status"]["observedGeneration"] == drifted["metadata"]["generation"]
        assert "mlops_drift_column_score{" in operator.metrics()

        # Deleted: its series go.
        custom.delete_namespaced_custom_object(G, V, namespace, "driftmonitors", "dm")
        wait_for(
            lambda: (
                "mlops_drift_share{" not in (text := operator.metrics())
                and "mlops_drift_column_score{" not in text
                and "mlops_drift_drifted{" not in text
            ),
            "the deleted DriftMonitor's series to go",
            30,
        )
    finally:
        operator.stop()


def test_a_schedule_runs_a_check_when_it_comes_due(
    control_plane: ControlPlane,
    s3: LocalS3,
    dataset: str,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    batch = client.BatchV1Api(core.api_client)
    operator = start_operator(control_plane, namespace, tmp_path / "operator.log")
    try:
        _served_model(core, custom, namespace, dataset)
        _monitor(s3, custom, namespace, dataset, schedule="* * * * *")
        summary = _check_summary(False, [("brightness", 0.01, False)], "s3://r/report.html")
        _finish_stage(core, namespace, "dm-check-1-a1", summary)
        first = _wait_phase(custom, namespace, "driftmonitors", "dm", "NoDrift")
        assert first["status"]["nextCheckTime"].endswith(":00Z")
        # Nothing changed but the clock: the next minute starts check 2, on the operator's own timer.
        wait_for(lambda: "dm-check-2-a1" in _jobs(batch, namespace), "the scheduled check's Job", 90)
        second = _get(custom, namespace, "driftmonitors", "dm")
        assert second["status"]["check"]["trigger"] == "Schedule"
        assert _jobs(batch, namespace) == ["dm-check-2-a1"]
    finally:
        operator.stop()


BRIGHTER = """
import sys

import boto3
import numpy as np
from mlops_trainer.demo_data import digits_splits, write_image_dataset
from mlops_trainer.storage import S3ObjectStore

bucket, prefix = sys.argv[1:3]
shifted = {
    name: (np.clip(images.astype(np.int64) + 5, 0, 16), labels)
    for name, (images, labels) in digits_splits().items()
}
write_image_dataset(S3ObjectStore(bucket, prefix, boto3.client("s3")), shifted)
"""


def test_the_real_drift_workload_stays_quiet_on_the_same_data_and_finds_a_brighter_batch(
    control_plane: ControlPlane,
    s3: LocalS3,
    engine: CompiledEngine,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    """`mlops-trainer drift` (Evidently, the session's really trained model) runs as the check Job's
    workload through the local pod runner, with the environment the operator built. The training run
    and the compile/evaluate stages are finished by hand around the really trained model (training
    it again would add minutes and test nothing of the monitor)."""
    batch = client.BatchV1Api(core.api_client)
    bucket = engine.bucket
    create_s3_secret(core, namespace)
    create_digits_dataset(custom, s3, engine, namespace)
    model = copy_trained_model(s3, engine, bucket)
    run = _run("r1", bucket, output={"uri": model})
    custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
    # The current data: first the demo data itself (its test split against the train split).
    same = _dataset_body(s3, bucket)
    same["metadata"] = {"name": "landed"}
    same["spec"]["source"] |= {"uri": f"s3://{bucket}/datasets/digits/v1/", "region": DEV_REGION}
    custom.create_namespaced_custom_object(G, V, namespace, "datasets", same)
    operator = start_operator(control_plane, namespace, tmp_path / "operator.log")
    runner = LocalPodRunner(api, namespace, executables={"mlops-trainer": str(TRAINER)})
    try:
        _wait_phase(custom, namespace, "datasets", "digits", "Ready")
        _finish_stage(core, namespace, "r1-a1", SUCCESS)
        _wait_phase(custom, namespace, "trainingruns", "r1", "Succeeded")
        mv = {
            "apiVersion": f"{G}/{V}",
            "kind": "ModelVersion",
            "metadata": {"name": "mv"},
            "spec": {"modelName": "digits", "source": {"trainingRunRef": {"name": "r1"}}},
        }
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", mv)
        _finish_stage(core, namespace, "mv-compile-a1", compiled(write_compile_output(s3, engine, model)))
        _finish_stage(core, namespace, "mv-evaluate-a1", evaluated())
        _wait_phase(custom, namespace, "modelversions", "mv", "Ready")
        _wait_phase(custom, namespace, "datasets", "landed", "Ready")
        runner.start()  # from here on the check pods run the real workload
        monitor = {
            "apiVersion": f"{G}/{V}",
            "kind": "DriftMonitor",
            "metadata": {"name": "dm"},
            "spec": {"modelVersionRef": {"name": "mv"}, "currentDatasetRef": {"name": "landed"}},
        }
        custom.create_namespaced_custom_object(G, V, namespace, "driftmonitors", monitor)
        quiet = _wait_settled(custom, namespace, "dm", 240)
        status = quiet["status"]
        assert status["phase"] == "NoDrift", json.dumps(status, indent=1)
        assert _condition(quiet, "Drifted")["status"] == "False"
        names = {c["name"] for c in status["columns"]}
        assert {"brightness", "contrast", "predicted_class", "confidence"} <= names
        assert status["referenceURI"].startswith(f"{model}drift-reference/")
        assert _s3_exists(s3, status["reportURI"])
        assert _s3_exists(s3, status["resultURI"])

        # A brighter batch lands: the real check finds brightness and contrast drifted.
        script = tmp_path / "brighter.py"
        script.write_text(BRIGHTER)
        env = trainer_env(s3, tmp_path / "unused.json")
        prefix = "datasets/digits-brighter/v1"
        subprocess.run([str(TRAINER.parent / "python"), str(script), bucket, prefix], env=env, check=True)
        patch = {"spec": {"source": {"uri": f"s3://{bucket}/{prefix}/"}}}
        custom.patch_namespaced_custom_object(G, V, namespace, "datasets", "landed", patch)
        wait_for(lambda: "dm-check-2-a1" in _jobs(batch, namespace), "the NewData check's Job", 60)
        drifted = _wait_settled(custom, namespace, "dm", 240)
        status = drifted["status"]
        assert status["phase"] == "Drifted", json.dumps(status, indent=1)
        assert status["lastCheck"]["trigger"] == "NewData"
        assert {"brightness", "contrast"} <= set(status["driftedColumns"].split(","))
        assert all(c["drifted"] for c in status["columns"][: status["driftedCount"]])
        assert _s3_exists(s3, status["reportURI"])
        wait_for_events(
            core,
            namespace,
            "dm",
            lambda es: any(e.reason == "DriftDetected" and e.type == "Warning" for e in es),
            "a DriftDetected Warning",
        )
    finally:
        runner.stop()
        operator.stop()


def _wait_settled(
    custom: client.CustomObjectsApi, namespace: str, name: str, timeout: float
) -> dict[str, Any]:
    def settled() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "driftmonitors", name)
        status = obj.get("status", {})
        return (
            obj
            if status.get("phase") in ("NoDrift", "Drifted", "Failed") and not status.get("check")
            else None
        )

    return wait_for(settled, f"DriftMonitor {name} to settle", timeout, interval=1)


def _s3_exists(s3: LocalS3, uri: str) -> bool:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        s3.client().head_object(Bucket=bucket, Key=key)
    except Exception:
        return False
    return True
