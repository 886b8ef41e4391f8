"""DriftMonitor's pure pieces: the spec's rules, the check Job, when a check is due, the status a
result summary (crafted per mlops_contract.drift) gives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from mlops_contract import drift, envvars
from mlops_contract import result as contract_result
from pydantic import ValidationError

from mlops_operator.api.v1alpha1 import DatasetSpec, DriftMonitorSpec
from mlops_operator.builders.driftmonitor import (
    CheckInputs,
    JobInputs,
    build_check_job,
    check_hash,
    drift_result,
    due_check,
    job_name,
    output_uri,
    reference_uri,
)

MODEL = "s3://models/digits/run-1/model"
T0 = datetime(2026, 1, 1, 0, 0, tzinfo=UTC)


def spec(**extra: Any) -> DriftMonitorSpec:
    return DriftMonitorSpec.model_validate(
        {"modelVersionRef": {"name": "mv"}, "currentDatasetRef": {"name": "landed"}, **extra}
    )


def dataset() -> DatasetSpec:
    return DatasetSpec.model_validate(
        {
            "source": {
                "uri": "s3://data/landed/",
                "endpointURL": "http://s3.local:9000",
                "region": "eu-west-1",
                "credentialsSecretRef": {"name": "s3-creds"},
            }
        }
    )


def inputs(s: DriftMonitorSpec, **extra: Any) -> JobInputs:
    values: dict[str, Any] = {
        "name": "dm",
        "namespace": "team",
        "uid": "0123456789abcdef",
        "spec": s,
        "check": 3,
        "attempt": 2,
        "image": "trainer:1",
        "current": dataset(),
        "current_fingerprint": "sha256:" + "c" * 64,
        "reference_dataset_uri": "s3://data/train/",
        "reference_fingerprint": "sha256:" + "r" * 64,
        "model_uri": MODEL,
        "engine_uri": f"{MODEL}/compiled/mv/model.onnx",
        "output_uri": output_uri(MODEL, "dm", "0123456789abcdef", 3),
        "deadline_seconds": 900,
        **extra,
    }
    return JobInputs(**values)


def env_of(job: dict[str, Any]) -> dict[str, Any]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ({}, "exactly one of modelVersionRef or inferenceDeploymentRef"),
        ({"inferenceDeploymentRef": {"name": "idep"}}, None),
    ],
)
def test_exactly_one_target(extra: dict[str, Any], fragment: str | None) -> None:
    body = {"currentDatasetRef": {"name": "d"}, **extra}
    if fragment is None:
        DriftMonitorSpec.model_validate(body)
        with pytest.raises(ValidationError, match="exactly one"):
            DriftMonitorSpec.model_validate({**body, "modelVersionRef": {"name": "m"}})
    else:
        with pytest.raises(ValidationError, match=fragment):
            DriftMonitorSpec.model_validate(body)


@pytest.mark.parametrize("schedule", ["*/15 * * * *", "0 3 * * 1-5", "@daily"])
def test_valid_schedules(schedule: str) -> None:
    assert spec(schedule=schedule).schedule == schedule


@pytest.mark.parametrize("schedule", ["61 * * * *", "* * * *", "@sometimes", "every hour"])
def test_invalid_schedules_are_refused(schedule: str) -> None:
    with pytest.raises(ValidationError, match="must be a cron expression"):
        spec(schedule=schedule)


def test_method_is_an_enum_and_share_a_fraction() -> None:
    with pytest.raises(ValidationError):
        spec(method="chisquare")
    with pytest.raises(ValidationError):
        spec(driftShareThreshold=1.5)
    assert spec().drift_share_threshold == 0.5


def test_check_job_env_follows_the_contract() -> None:
    job = build_check_job(inputs(spec(method="wasserstein", columnThreshold=0.2, columns=["brightness"])))
    assert job["metadata"]["name"] == "dm-check-3-a2" == job_name("dm", 3, 2)
    env = env_of(job)
    assert env[envvars.DATASET_URI] == "s3://data/landed/"
    assert env[drift.CURRENT_FINGERPRINT] == "sha256:" + "c" * 64
    assert env[drift.REFERENCE_URI] == f"{MODEL}/drift-reference/" == reference_uri(MODEL + "/")
    assert env[drift.REFERENCE_DATASET_URI] == "s3://data/train/"
    assert env[drift.REFERENCE_FINGERPRINT] == "sha256:" + "r" * 64
    assert env[drift.ENGINE_URI] == f"{MODEL}/compiled/mv/model.onnx"
    assert env[drift.OUTPUT_URI] == f"{MODEL}/drift/dm-01234567/check-3/"
    assert env[drift.METHOD] == "wasserstein"
    assert env[drift.COLUMN_THRESHOLD] == "0.2"
    assert env[drift.SHARE_THRESHOLD] == "0.5"
    assert env[drift.COLUMNS] == '["brightness"]'
    assert drift.MAX_SAMPLES_ENV not in env
    # Credentials only as secretKeyRefs, as the stage Jobs get them.
    assert env[envvars.AWS_ACCESS_KEY_ID] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env[envvars.AWS_ENDPOINT_URL_S3] == "http://s3.local:9000"


def test_check_job_is_hardened_and_owned() -> None:
    job = build_check_job(inputs(spec(resources={"cpu": "2", "memory": "4Gi"}, serviceAccountName="drift")))
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["mlops-trainer"]
    assert container["args"] == ["drift"]
    assert container["image"] == "trainer:1"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["resources"] == {
        "requests": {"cpu": "2", "memory": "4Gi"},
        "limits": {"cpu": "2", "memory": "4Gi"},
    }
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "drift"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert job["spec"]["backoffLimit"] == 0
    assert job["spec"]["activeDeadlineSeconds"] == 900
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"], owner["controller"]) == ("DriftMonitor", "0123456789abcdef", True)
    assert job["metadata"]["labels"]["mlops.dev/check"] == "3"
    assert (
        build_check_job(inputs(spec(image="custom:2")))["spec"]["template"]["spec"]["containers"][0]["image"]
        == "custom:2"
    )


def test_check_hash_follows_only_the_check_fields() -> None:
    assert check_hash(spec()) == check_hash(spec(schedule="@daily", deadlineSeconds=60))
    assert check_hash(spec()) != check_hash(spec(method="psi"))
    assert check_hash(spec()) != check_hash(spec(driftShareThreshold=0.3))


CHECKED = CheckInputs("mv", "s3://e/model.onnx", "sha256:r", "sha256:c", "h")
LAST = {
    "number": 1,
    "time": "2026-01-01T00:10:00Z",
    "modelVersion": "mv",
    "engineURI": "s3://e/model.onnx",
    "referenceFingerprint": "sha256:r",
    "currentFingerprint": "sha256:c",
    "specHash": "h",
}


def test_first_check_is_due_at_once() -> None:
    assert due_check(CHECKED, None, None, T0, T0).trigger == "FirstCheck"


def test_nothing_due_when_the_inputs_were_checked() -> None:
    due = due_check(CHECKED, LAST, None, T0, T0 + timedelta(days=3))
    assert due == due.__class__(None, None)


@pytest.mark.parametrize(
    ("change", "trigger"),
    [
        ({"currentFingerprint": "sha256:old"}, "NewData"),
        ({"modelVersion": "mv-old"}, "ModelChanged"),
        ({"engineURI": "s3://old"}, "ModelChanged"),
        ({"specHash": "other"}, "SpecChanged"),
    ],
)
def test_changed_inputs_make_a_check_due(change: dict[str, str], trigger: str) -> None:
    assert due_check(CHECKED, {**LAST, **change}, None, T0, T0).trigger == trigger


def test_schedule_due_from_the_last_check() -> None:
    # Last check 00:10, hourly at :00: next due 01:00, not before.
    before = due_check(CHECKED, LAST, "0 * * * *", T0, T0 + timedelta(minutes=59))
    assert before.trigger is None
    assert before.next_time == T0 + timedelta(hours=1)
    at = due_check(CHECKED, LAST, "0 * * * *", T0, T0 + timedelta(hours=1, seconds=1))
    assert at.trigger == "Schedule"
    # After a check starts, the next time counts from now: 02:00.
    assert at.next_time == T0 + timedelta(hours=2)
    # Missed many times (operator down for a day): one check now, not one per missed time.
    late = due_check(CHECKED, LAST, "0 * * * *", T0, T0 + timedelta(days=1, minutes=30))
    assert late.trigger == "Schedule"
    assert late.next_time == T0 + timedelta(days=1, hours=1)


def summary(drifted: bool, columns: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        contract_result.SCHEMA_FIELD: contract_result.SCHEMA,
        contract_result.COMMAND: "drift",
        contract_result.STATUS: contract_result.SUCCEEDED,
        contract_result.ARTIFACTS: {drift.ARTIFACT_REPORT: "s3://out/report.html"},
        drift.DRIFT: {
            drift.DRIFTED: drifted,
            drift.SHARE: sum(c[drift.COLUMN_DRIFTED] for c in columns) / len(columns),
            drift.THRESHOLD: 0.5,
            drift.COLUMNS_FIELD: columns,
            drift.COLUMN_COUNT: len(columns),
            drift.DRIFTED_COUNT: sum(c[drift.COLUMN_DRIFTED] for c in columns),
            drift.REFERENCE_ROWS: 500,
            drift.CURRENT_ROWS: 200,
            **extra,
        },
    }


def column(name: str, score: float, drifted: bool) -> dict[str, Any]:
    return {
        drift.NAME: name,
        drift.COLUMN_METHOD: "wasserstein",
        drift.SCORE: score,
        drift.THRESHOLD: 0.1,
        drift.COLUMN_DRIFTED: drifted,
    }


def test_drifted_result_gives_the_columns_drifted_first() -> None:
    cols = [column("contrast", 0.01, False), column("brightness", 0.9, True), column("entropy", 0.4, True)]
    result = drift_result(summary(True, cols), "s3://out/", "s3://ref/")
    assert result is not None
    assert result.drifted
    assert [c["name"] for c in result.columns] == ["brightness", "entropy", "contrast"]
    assert result.columns[0] == {
        "name": "brightness",
        "method": "wasserstein",
        "score": 0.9,
        "threshold": 0.1,
        "drifted": True,
    }
    assert result.fields["driftShare"] == pytest.approx(2 / 3, abs=1e-6)
    assert result.fields["driftedColumns"] == "brightness,entropy"
    assert result.fields["reportURI"] == "s3://out/report.html"  # the artifact the workload named
    assert result.fields["resultURI"] == f"s3://out/{drift.RESULT_FILE}"  # else the contract's place
    assert result.fields["referenceURI"] == "s3://ref/"
    assert (result.fields["columnCount"], result.fields["driftedCount"]) == (3, 2)
    assert (result.fields["referenceRows"], result.fields["currentRows"]) == (500, 200)


def test_quiet_result_and_garbage_in_it() -> None:
    cols = [column("brightness", 0.01, False), {drift.NAME: "x", drift.SCORE: float("nan")}, {"nope": 1}]
    result = drift_result(summary(False, cols[:1]) | {}, "s3://out/", "s3://ref/")
    assert result is not None
    assert not result.drifted
    assert result.fields["driftedColumns"] is None
    raw = summary(False, cols[:1])
    raw[drift.DRIFT][drift.COLUMNS_FIELD] = cols
    result = drift_result(raw, "s3://out/", "s3://ref/")
    assert result is not None
    assert result.columns == [
        {"name": "brightness", "method": "wasserstein", "score": 0.01, "threshold": 0.1, "drifted": False},
        {"name": "x", "drifted": False},  # a NaN score is left out, an entry without a name dropped
    ]


def test_no_drift_section_is_no_result() -> None:
    assert drift_result({"status": "Succeeded"}, "s3://out/", "s3://ref/") is None
