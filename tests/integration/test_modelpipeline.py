"""ModelPipeline on the real control plane: each trigger makes exactly one run (a TrainingRun and a
ModelVersion `<pipeline>-<n>`, owned and labelled), Forbid skips, Replace supersedes, and a Dataset
fingerprint change makes one run even when the operator is killed with SIGKILL around it.

The runs' TrainingRuns are suspended (`trainingRunTemplate.suspend: true`): no training runs here, the
runs stay active, which is what the concurrency policies act on. Outcomes from children (Promoted,
Rejected, Failed) are covered by the unit tests (tests/unit/test_modelpipeline.py), not here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubernetes import client

from mlops_operator.builders.modelpipeline import HANDLED_ANNOTATION, RUN_LABEL
from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.s3 import LocalS3
from tests.integration.conftest import OperatorProcess, start_operator
from tests.samples import SAMPLES, load
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"


def kill9(operator: OperatorProcess) -> None:
    """SIGKILL: no shutdown handlers, no last status patch (as tests/integration/faults' kill9)."""
    operator.process.kill()
    operator.process.wait(timeout=10)


def _get(custom: client.CustomObjectsApi, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, namespace, plural, name)  # type: ignore[no-any-return]


def _children(custom: client.CustomObjectsApi, namespace: str, plural: str) -> dict[str, dict[str, Any]]:
    items = custom.list_namespaced_custom_object(
        G, V, namespace, plural, label_selector="mlops.dev/modelpipeline=p"
    )
    return {i["metadata"]["name"]: i for i in items["items"] if not i["metadata"].get("deletionTimestamp")}


def _pipeline(bucket: str) -> dict[str, Any]:
    doc = load(SAMPLES / "06-modelpipeline.yaml")
    doc["metadata"] = {"name": "p"}
    spec = doc["spec"]
    spec["triggers"] = {"onDatasetChange": True}
    spec["concurrencyPolicy"] = "Forbid"
    spec["trainingRunTemplate"].update(
        suspend=True,  # no training here: runs stay active
        output={"uri": f"s3://{bucket}/models/p/"},
        resources={"gpusPerWorker": 0, "cpu": "1", "memory": "1Gi"},
    )
    spec["trainingRunTemplate"].pop("checkpoint")
    spec["trainingRunTemplate"]["distributed"] = {"nodes": 1, "procsPerNode": 1}
    return doc


def _runs(custom: client.CustomObjectsApi, namespace: str) -> list[dict[str, Any]]:
    return list((_get(custom, namespace, "modelpipelines", "p").get("status") or {}).get("runs") or [])


def _wait_runs(
    custom: client.CustomObjectsApi, namespace: str, outcomes: list[tuple[str, str]]
) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        runs = _runs(custom, namespace)
        return runs if [(r["name"], r["outcome"]) for r in runs] == outcomes else None

    try:
        return wait_for(probe, f"runs {outcomes}", 60)
    except AssertionError as error:
        raise AssertionError(f"{error}\nruns: {json.dumps(_runs(custom, namespace), indent=1)}") from None


def _annotate(custom: client.CustomObjectsApi, namespace: str, value: str) -> None:
    custom.patch_namespaced_custom_object(
        G, V, namespace, "modelpipelines", "p", {"metadata": {"annotations": {"mlops.dev/trigger": value}}}
    )


def _fingerprint(custom: client.CustomObjectsApi, namespace: str, old: str | None = None) -> str:
    def probe() -> str | None:
        status = _get(custom, namespace, "datasets", "digits").get("status") or {}
        fp = status.get("fingerprint")
        return str(fp) if fp and fp != old and status.get("phase") == "Ready" else None

    return wait_for(probe, "the Dataset's (new) fingerprint", 60)


def test_triggers_make_one_run_each_forbid_skips_replace_supersedes_and_kill9_makes_no_second_run(
    control_plane: ControlPlane,
    s3: LocalS3,
    dataset: str,
    custom: client.CustomObjectsApi,
    namespace: str,
    tmp_path: Path,
):
    bucket = dataset
    log = tmp_path / "operator.log"
    operator = start_operator(control_plane, namespace, log)
    try:
        first = _fingerprint(custom, namespace)
        custom.create_namespaced_custom_object(G, V, namespace, "modelpipelines", _pipeline(bucket))

        # The first look: one run on the Dataset as it is.
        runs = _wait_runs(custom, namespace, [("p-1", "Running")])
        assert (runs[0]["trigger"], runs[0]["datasetFingerprint"]) == ("DatasetChange", first)
        training, versions = (
            _children(custom, namespace, "trainingruns"),
            _children(custom, namespace, "modelversions"),
        )
        assert set(training) == set(versions) == {"p-1"}
        tr, mv = training["p-1"], versions["p-1"]
        pipeline = _get(custom, namespace, "modelpipelines", "p")
        for child in (tr, mv):
            (owner,) = child["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["uid"], owner["controller"]) == (
                "ModelPipeline",
                pipeline["metadata"]["uid"],
                True,
            )
            assert child["metadata"]["labels"][RUN_LABEL] == "1"
            assert json.loads(child["metadata"]["annotations"][HANDLED_ANNOTATION])["fingerprint"] == first
        assert tr["spec"]["datasetRef"] == {"name": "digits"}
        assert tr["spec"]["output"]["uri"] == f"s3://{bucket}/models/p/p-1/"
        assert mv["spec"]["source"] == {"trainingRunRef": {"name": "p-1"}}

        # Forbid: a manual trigger while p-1 is active is recorded as Skipped; nothing is made.
        _annotate(custom, namespace, "one")
        _wait_runs(custom, namespace, [("p-1", "Running"), ("p-2", "Skipped")])
        assert set(_children(custom, namespace, "trainingruns")) == {"p-1"}

        # Replace: the next trigger supersedes p-1 (its children deleted) and starts p-3.
        custom.patch_namespaced_custom_object(
            G, V, namespace, "modelpipelines", "p", {"spec": {"concurrencyPolicy": "Replace"}}
        )
        _annotate(custom, namespace, "two")
        runs = _wait_runs(custom, namespace, [("p-1", "Superseded"), ("p-2", "Skipped"), ("p-3", "Running")])
        assert runs[2]["trigger"] == "Manual"
        wait_for(
            lambda: set(_children(custom, namespace, "trainingruns")) == {"p-3"} or None, "p-1 deleted", 30
        )
        assert set(_children(custom, namespace, "modelversions")) == {"p-3"}

        # A new fingerprint, and SIGKILL as soon as its run's TrainingRun appears (around the status write).
        for i in range(2):
            s3.client().put_object(Bucket=bucket, Key=f"digits-2/part-{i}.npz", Body=b"y" * (80 + i))
        custom.patch_namespaced_custom_object(
            G, V, namespace, "datasets", "digits", {"spec": {"source": {"uri": f"s3://{bucket}/digits-2/"}}}
        )
        wait_for(
            lambda: "p-4" in _children(custom, namespace, "trainingruns") or None, "run p-4's TrainingRun", 60
        )
        kill9(operator)
        second = _fingerprint(custom, namespace, first)
        operator = start_operator(control_plane, namespace, log)
        runs = _wait_runs(
            custom,
            namespace,
            [("p-1", "Superseded"), ("p-2", "Skipped"), ("p-3", "Superseded"), ("p-4", "Running")],
        )
        assert (runs[3]["trigger"], runs[3]["datasetFingerprint"]) == ("DatasetChange", second)
        # Settled: no second run for the same fingerprint, however the kill fell.
        operator.stop()
        operator = start_operator(control_plane, namespace, log)
        wait_for(
            lambda: (
                _get(custom, namespace, "modelpipelines", "p")["status"].get("lastDatasetFingerprint")
                == second
                or None
            ),
            "the fingerprint recorded",
            30,
        )
        assert set(_children(custom, namespace, "trainingruns")) == {"p-4"}
        assert set(_children(custom, namespace, "modelversions")) == {"p-4"}
        assert [r["name"] for r in _runs(custom, namespace)] == ["p-1", "p-2", "p-3", "p-4"]
        status = _get(custom, namespace, "modelpipelines", "p")["status"]
        assert status["active"] == ["p-4"]
        assert status["lastRunNumber"] == 4
    finally:
        operator.stop()
        if operator.process.returncode not in (0, -15, -9):
            print(log.read_text()[-5000:])
