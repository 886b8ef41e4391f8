"""ModelPipeline's Schedule and Drift triggers on the real control plane, each making exactly one run
(also across an operator kill -9), and the rule for a drift on unchanged training data: no run, the
DriftUnfixable condition (TrainingDataUnchanged) and one Warning event, cleared when the data changes.

The runs' TrainingRuns are suspended (`trainingRunTemplate.suspend: true`, as in
tests/integration/test_modelpipeline.py), so no training runs unless a test resumes one. The Drift test
runs the real workloads through the local pod runner: every DriftMonitor check is `mlops-trainer drift`
(Evidently) on the really trained model, and the one run it resumes really trains (2 steps), compiles
and evaluates. Only the served model's own TrainingRun and compile/evaluate Jobs are finished by hand
around the session's really trained model, as in test_driftmonitor.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.runner import LocalPodRunner
from mlops_operator.dev.s3 import DEV_REGION, LocalS3
from mlops_operator.timeutil import from_rfc3339, to_rfc3339
from tests.integration.conftest import _dataset_body, create_s3_secret, start_operator
from tests.integration.digits_engine import (
    TRAINER,
    CompiledEngine,
    copy_trained_model,
    create_digits_dataset,
    trainer_env,
    write_compile_output,
)
from tests.integration.test_driftmonitor import BRIGHTER, _jobs, _wait_settled
from tests.integration.test_modelpipeline import _children, _get, _pipeline, _runs, kill9
from tests.integration.test_modelversion import _finish_stage, compiled, evaluated
from tests.integration.test_trainingrun import SUCCESS, _run
from tests.waiting import wait_for, wait_for_events

G, V = "mlops.dev", "v1alpha1"


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


def _wait_runs(
    custom: client.CustomObjectsApi, namespace: str, outcomes: list[tuple[str, str]], timeout: float = 60
) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        runs = _runs(custom, namespace)
        return runs if [(r["name"], r["outcome"]) for r in runs] == outcomes else None

    try:
        return wait_for(probe, f"runs {outcomes}", timeout, interval=0.5)
    except AssertionError as error:
        raise AssertionError(f"{error}\nruns: {json.dumps(_runs(custom, namespace), indent=1)}") from None


def _minute(text: str) -> datetime:
    moment = from_rfc3339(text)
    assert (moment.second, moment.microsecond) == (0, 0), text
    return moment


def test_a_schedule_makes_one_run_per_minute_boundary_even_across_a_kill9(
    control_plane: ControlPlane,
    s3: LocalS3,
    dataset: str,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    log = tmp_path / "operator.log"
    operator = start_operator(control_plane, namespace, log)
    try:
        wait_for(
            lambda: (_get(custom, namespace, "datasets", "digits").get("status") or {}).get("fingerprint"),
            "the Dataset's fingerprint",
            60,
        )
        doc = _pipeline(dataset)
        doc["spec"]["triggers"] = {"onDatasetChange": False, "schedule": "* * * * *"}
        doc["spec"]["concurrencyPolicy"] = "Allow"
        custom.create_namespaced_custom_object(G, V, namespace, "modelpipelines", doc)
        created = from_rfc3339(
            _get(custom, namespace, "modelpipelines", "p")["metadata"]["creationTimestamp"]
        )

        # The first minute boundary after creation makes run p-1; SIGKILL as soon as its TrainingRun
        # exists (around the status write that records it).
        wait_for(
            lambda: "p-1" in _children(custom, namespace, "trainingruns") or None, "run p-1's TrainingRun", 75
        )
        kill9(operator)
        operator = start_operator(control_plane, namespace, log)
        (first,) = _wait_runs(custom, namespace, [("p-1", "Running")])
        boundary = _minute(first["triggerKey"])
        assert first["trigger"] == "Schedule"
        assert created < boundary <= created + timedelta(minutes=1)
        assert (
            first["datasetFingerprint"]
            == _get(custom, namespace, "datasets", "digits")["status"]["fingerprint"]
        )
        status = _get(custom, namespace, "modelpipelines", "p")["status"]
        assert status["lastScheduleTime"] == to_rfc3339(boundary)
        assert _minute(status["nextScheduleTime"]) == boundary + timedelta(minutes=1)
        # No duplicate for that minute, however the kill fell.
        time.sleep(3)
        assert set(_children(custom, namespace, "trainingruns")) == {"p-1"}
        assert set(_children(custom, namespace, "modelversions")) == {"p-1"}
        assert [r["name"] for r in _runs(custom, namespace)] == ["p-1"]

        # The next minute makes exactly one more run (Allow: beside the still active p-1).
        runs = _wait_runs(custom, namespace, [("p-1", "Running"), ("p-2", "Running")], 75)
        assert runs[1]["trigger"] == "Schedule"
        assert _minute(runs[1]["triggerKey"]) == boundary + timedelta(minutes=1)
        time.sleep(3)
        assert set(_children(custom, namespace, "trainingruns")) == {"p-1", "p-2"}
        status = _get(custom, namespace, "modelpipelines", "p")["status"]
        assert status["active"] == ["p-1", "p-2"]
        assert status["lastRunNumber"] == 2
        assert _minute(status["nextScheduleTime"]) == boundary + timedelta(minutes=2)
    finally:
        operator.stop()
        if operator.process.returncode not in (0, -15, -9):
            print(log.read_text()[-5000:])


def _land(custom: client.CustomObjectsApi, namespace: str, uri: str) -> None:
    patch = {"spec": {"source": {"uri": uri}}}
    custom.patch_namespaced_custom_object(G, V, namespace, "datasets", "landed", patch)


def test_a_drifted_monitor_makes_one_run_and_a_drift_on_unchanged_training_data_makes_none(
    control_plane: ControlPlane,
    s3: LocalS3,
    engine: CompiledEngine,
    api: client.ApiClient,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    batch = client.BatchV1Api(core.api_client)
    bucket = engine.bucket
    # The served model `mv` and its monitor `dm`, as test_driftmonitor's real-workload test sets them up.
    create_s3_secret(core, namespace)
    create_digits_dataset(custom, s3, engine, namespace)
    model = copy_trained_model(s3, engine, bucket)
    custom.create_namespaced_custom_object(
        G, V, namespace, "trainingruns", _run("r1", bucket, output={"uri": model})
    )
    same_uri = f"s3://{bucket}/datasets/digits/v1/"
    same = _dataset_body(s3, bucket)
    same["metadata"] = {"name": "landed"}
    same["spec"]["source"] |= {"uri": same_uri, "region": DEV_REGION}
    custom.create_namespaced_custom_object(G, V, namespace, "datasets", same)
    log = tmp_path / "operator.log"
    operator = start_operator(control_plane, namespace, log)
    runner = LocalPodRunner(api, namespace, executables={"mlops-trainer": str(TRAINER)})
    try:
        wait_for(
            lambda: _get(custom, namespace, "datasets", "digits").get("status", {}).get("phase") == "Ready",
            "the training Dataset",
            60,
        )
        _finish_stage(core, namespace, "r1-a1", SUCCESS)
        mv = {
            "apiVersion": f"{G}/{V}",
            "kind": "ModelVersion",
            "metadata": {"name": "mv"},
            "spec": {"modelName": "digits", "source": {"trainingRunRef": {"name": "r1"}}},
        }
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", mv)
        _finish_stage(core, namespace, "mv-compile-a1", compiled(write_compile_output(s3, engine, model)))
        _finish_stage(core, namespace, "mv-evaluate-a1", evaluated())
        wait_for(
            lambda: _get(custom, namespace, "modelversions", "mv").get("status", {}).get("phase") == "Ready",
            "ModelVersion mv Ready",
            60,
        )
        runner.start()  # the check pods run the real workload
        monitor = {
            "apiVersion": f"{G}/{V}",
            "kind": "DriftMonitor",
            "metadata": {"name": "dm"},
            "spec": {"modelVersionRef": {"name": "mv"}, "currentDatasetRef": {"name": "landed"}},
        }
        custom.create_namespaced_custom_object(G, V, namespace, "driftmonitors", monitor)
        quiet = _wait_settled(custom, namespace, "dm", 240)
        assert quiet["status"]["phase"] == "NoDrift", json.dumps(quiet["status"], indent=1)

        # The pipeline: triggered by the monitor only; a quiet monitor starts nothing.
        doc = _pipeline(bucket)
        spec = doc["spec"]
        spec["triggers"] = {"onDatasetChange": False, "driftMonitorRef": {"name": "dm"}}
        spec.pop("promotion", None)  # no champion gate: the first version is promoted as it is
        spec["modelVersionTemplate"] = {  # as test_modelpipeline_gate's; no gates (2 steps score low)
            "modelName": "digits",
            "compile": {"target": "onnx", "precision": "fp32", "maxBatchSize": 16},
            "evaluation": {"latencyBatches": 5, "warmupBatches": 1},
        }
        spec["trainingRunTemplate"]["hyperparameters"] = {
            "epochs": 1,
            "maxSteps": 2,
            "batchSize": 64,
            "numWorkers": 0,
        }
        custom.create_namespaced_custom_object(G, V, namespace, "modelpipelines", doc)
        training_fp = _get(custom, namespace, "datasets", "digits")["status"]["fingerprint"]
        wait_for(
            lambda: (
                (_get(custom, namespace, "modelpipelines", "p").get("status") or {}).get("phase") == "Idle"
            ),
            "the pipeline Idle",
            30,
        )
        assert _runs(custom, namespace) == []

        # A brighter batch lands: the real check says Drifted, and the pipeline makes exactly one run,
        # also when the operator is killed (SIGKILL) as soon as the run's TrainingRun exists.
        script = tmp_path / "brighter.py"
        script.write_text(BRIGHTER)
        prefix = f"datasets/digits-brighter-{uuid.uuid4().hex[:6]}/v1"
        env = trainer_env(s3, tmp_path / "unused.json")
        subprocess.run([str(TRAINER.parent / "python"), str(script), bucket, prefix], env=env, check=True)
        brighter_uri = f"s3://{bucket}/{prefix}/"
        _land(custom, namespace, brighter_uri)
        wait_for(lambda: "dm-check-2-a1" in _jobs(batch, namespace), "the NewData check's Job", 60)
        wait_for(
            lambda: "p-1" in _children(custom, namespace, "trainingruns") or None,
            "run p-1's TrainingRun",
            240,
            interval=0.2,
        )
        kill9(operator)
        operator = start_operator(control_plane, namespace, log)
        drifted = _wait_settled(custom, namespace, "dm", 60)
        assert drifted["status"]["phase"] == "Drifted", json.dumps(drifted["status"], indent=1)
        transition = _condition(drifted, "Drifted")["lastTransitionTime"]
        (run,) = _wait_runs(custom, namespace, [("p-1", "Running")])
        assert (run["trigger"], run["triggerKey"], run["datasetFingerprint"]) == (
            "Drift",
            transition,
            training_fp,
        )
        time.sleep(3)
        assert set(_children(custom, namespace, "trainingruns")) == {"p-1"}
        assert [r["name"] for r in _runs(custom, namespace)] == ["p-1"]
        assert _get(custom, namespace, "modelpipelines", "p")["status"]["lastDriftTransition"] == transition

        # p-1 really trains (its TrainingRun resumed; 2 steps), compiles, evaluates and is promoted (the
        # pipeline's first version).
        custom.patch_namespaced_custom_object(
            G, V, namespace, "trainingruns", "p-1", {"spec": {"suspend": False}}
        )
        _wait_runs(custom, namespace, [("p-1", "Promoted")], 420)
        assert _get(custom, namespace, "modelpipelines", "p")["status"]["latestPromoted"] == "p-1"

        # A new Drifted transition (a quiet check, then a drifted one) on unchanged training data:
        # no run, DriftUnfixable=True (TrainingDataUnchanged) and one Warning event.
        _land(custom, namespace, same_uri)
        wait_for(lambda: "dm-check-3-a1" in _jobs(batch, namespace), "check 3's Job", 60)
        calm = _wait_settled(custom, namespace, "dm", 240)
        assert calm["status"]["phase"] == "NoDrift", json.dumps(calm["status"], indent=1)
        _land(custom, namespace, brighter_uri)
        wait_for(lambda: "dm-check-4-a1" in _jobs(batch, namespace), "check 4's Job", 60)
        loud = _wait_settled(custom, namespace, "dm", 240)
        assert loud["status"]["phase"] == "Drifted", json.dumps(loud["status"], indent=1)
        again = _condition(loud, "Drifted")["lastTransitionTime"]
        assert again != transition

        def unfixable() -> dict[str, Any] | None:
            held = _condition(_get(custom, namespace, "modelpipelines", "p"), "DriftUnfixable")
            return held if held.get("status") == "True" else None

        held = wait_for(unfixable, "DriftUnfixable=True", 30)
        assert held["reason"] == "TrainingDataUnchanged"
        assert "since run 1" in held["message"]
        assert training_fp in held["message"]
        wait_for_events(
            core,
            namespace,
            "p",
            lambda es: any(e.reason == "DriftUnfixable" for e in es),
            "a DriftUnfixable event",
        )
        time.sleep(3)
        events = list(core.list_namespaced_event(namespace, field_selector="involvedObject.name=p").items)
        assert [(e.type, e.count or 1) for e in events if e.reason == "DriftUnfixable"] == [("Warning", 1)]
        assert [r["name"] for r in _runs(custom, namespace)] == ["p-1"]
        assert set(_children(custom, namespace, "trainingruns")) == {"p-1"}
        assert _get(custom, namespace, "modelpipelines", "p")["status"]["lastDriftTransition"] == again

        # New training data: the condition clears (onDatasetChange is off: still no run).
        objects = s3.client()
        fresh = f"datasets/digits-{uuid.uuid4().hex[:6]}/v1/"
        for item in objects.list_objects_v2(Bucket=bucket, Prefix="datasets/digits/v1/")["Contents"]:
            key = fresh + item["Key"].removeprefix("datasets/digits/v1/")
            objects.copy_object(Bucket=bucket, Key=key, CopySource={"Bucket": bucket, "Key": item["Key"]})
        objects.put_object(Bucket=bucket, Key=f"{fresh}labelled-extra.txt", Body=b"new labels")
        patch = {"spec": {"source": {"uri": f"s3://{bucket}/{fresh}"}}}
        custom.patch_namespaced_custom_object(G, V, namespace, "datasets", "digits", patch)

        def cleared() -> dict[str, Any] | None:
            held = _condition(_get(custom, namespace, "modelpipelines", "p"), "DriftUnfixable")
            return held if held.get("status") == "False" else None

        assert wait_for(cleared, "DriftUnfixable to clear", 60)["reason"] == "TrainingDataChanged"
        assert [r["name"] for r in _runs(custom, namespace)] == ["p-1"]
    finally:
        runner.stop()
        operator.stop()
        if operator.process.returncode not in (0, -15, -9):
            print(log.read_text()[-5000:])
