"""Pure pieces of a DriftMonitor: the check Job, when a check is due, and the status a result gives.

The check Job runs the trainer image's `drift` command (`mlops_contract.drift`) with the pod
hardening, result contract and failure classification of the compile/evaluate Jobs. Its name is
deterministic (DriftMonitor, check number, attempt), so a restarted operator finds the Job it made
instead of making a second one.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from croniter import croniter
from mlops_contract import drift, envvars
from mlops_contract import result as contract_result
from mlops_contract.result import TERMINATION_MESSAGE_PATH

from ..api.v1alpha1 import API_VERSION, DatasetSpec
from ..api.v1alpha1.driftmonitor import DriftMonitorSpec
from ..k8s.naming import common_labels, dns_label, owner_reference, uid_label
from .pod import apply_scheduling, hardened_container, hardened_pod_spec, kueue_labels, s3_env

KIND = "DriftMonitor"
CONTAINER = "trainer"  # the name observation/training.py reads the termination message of
UID_LABEL = uid_label(KIND)
CHECK_LABEL = "mlops.dev/check"
SHM_SIZE_LIMIT = "256Mi"
MAX_STATUS_COLUMNS = drift.MAX_COLUMNS_IN_SUMMARY


def job_name(monitor: str, check: int, attempt: int) -> str:
    return dns_label(monitor, f"check-{check}-a{attempt}")


def check_hash(spec: DriftMonitorSpec) -> str:
    """Hash of the spec fields a check's result depends on: a change of one makes a check due."""
    wire = spec.wire()
    keep = ("method", "columnThreshold", "driftShareThreshold", "columns", "maxSamples")
    picked = {k: wire[k] for k in keep if k in wire}
    return hashlib.sha256(json.dumps(picked, sort_keys=True).encode()).hexdigest()[:16]


def model_prefix(model_uri: str) -> str:
    return model_uri.rstrip("/") + "/"


def reference_uri(model_uri: str) -> str:
    """Where the reference profile lives: next to the trained model, so every monitor of the model
    (and every check) reuses it, and a new model gets its own."""
    return f"{model_prefix(model_uri)}drift-reference/"


def output_uri(model_uri: str, monitor: str, uid: str, check: int) -> str:
    """Where one check writes its report and result: next to the model, one prefix per DriftMonitor
    object (its UID) and check."""
    return f"{model_prefix(model_uri)}drift/{monitor}-{uid[:8]}/check-{check}/"


# -- when a check is due ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckInputs:
    """What a check is run on; a check is due when these differ from the last check's."""

    model_version: str
    engine_uri: str
    reference_fingerprint: str
    current_fingerprint: str
    spec_hash: str


@dataclass(frozen=True)
class Due:
    """Whether a check is due now (`trigger`, else None) and when the schedule is next due."""

    trigger: str | None
    next_time: datetime | None


def next_scheduled(schedule: str | None, after: datetime) -> datetime | None:
    if not schedule:
        return None
    return croniter(schedule, after).get_next(datetime)


def due_check(
    inputs: CheckInputs,
    last: Mapping[str, Any] | None,
    schedule: str | None,
    created: datetime,
    now: datetime,
) -> Due:
    """Pure: the trigger of a check due now, if any, and the next scheduled time.

    First check, new data, another model (a promotion), a changed spec: due now. Else the schedule,
    counted from the last check's time (the object's creation before any): due once its next time
    has come, however many were missed meanwhile (one check, as CronJob's missed schedules)."""
    last = last or {}
    anchor = _time(last.get("time")) or created
    next_time = next_scheduled(schedule, anchor)
    if not last:
        trigger: str | None = "FirstCheck"
    elif last.get("currentFingerprint") != inputs.current_fingerprint:
        trigger = "NewData"
    elif (
        last.get("modelVersion") != inputs.model_version
        or last.get("engineURI") != inputs.engine_uri
        or last.get("referenceFingerprint") != inputs.reference_fingerprint
    ):
        trigger = "ModelChanged"
    elif last.get("specHash") != inputs.spec_hash:
        trigger = "SpecChanged"
    elif next_time is not None and now >= next_time:
        trigger = "Schedule"
    else:
        trigger = None
    if trigger is not None and schedule:
        next_time = next_scheduled(schedule, now)
    return Due(trigger, next_time)


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    from ..timeutil import from_rfc3339  # noqa: PLC0415

    return from_rfc3339(str(value))


# -- the Job -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobInputs:
    """Everything one attempt of one check's Job depends on."""

    name: str
    namespace: str
    uid: str
    spec: DriftMonitorSpec
    check: int
    attempt: int
    image: str
    current: DatasetSpec  # the current data: its URI, S3 endpoint, region and credentials
    current_fingerprint: str
    reference_dataset_uri: str
    reference_fingerprint: str
    model_uri: str  # the trained model's prefix (the reference is kept next to it)
    engine_uri: str  # the compile output's prefix (metadata.json + artifact), as evaluate reads it
    output_uri: str
    extra_tolerations: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    scratch_size_limit: str = "20Gi"
    deadline_seconds: int | None = None

    @property
    def job_name(self) -> str:
        return job_name(self.name, self.check, self.attempt)


def _check_env(inputs: JobInputs) -> list[dict[str, Any]]:
    spec = inputs.spec
    env = [
        {"name": envvars.DATASET_URI, "value": inputs.current.source.uri},
        {"name": drift.CURRENT_FINGERPRINT, "value": inputs.current_fingerprint},
        {"name": drift.REFERENCE_URI, "value": reference_uri(inputs.model_uri)},
        {"name": drift.REFERENCE_DATASET_URI, "value": inputs.reference_dataset_uri},
        {"name": drift.REFERENCE_FINGERPRINT, "value": inputs.reference_fingerprint},
        {"name": drift.ENGINE_URI, "value": inputs.engine_uri},
        {"name": drift.OUTPUT_URI, "value": inputs.output_uri},
        {"name": drift.SHARE_THRESHOLD, "value": repr(float(spec.drift_share_threshold))},
    ]
    if spec.method:
        env.append({"name": drift.METHOD, "value": drift.METHODS[spec.method]})
    if spec.column_threshold is not None:
        env.append({"name": drift.COLUMN_THRESHOLD, "value": repr(float(spec.column_threshold))})
    if spec.columns:
        env.append({"name": drift.COLUMNS, "value": json.dumps(list(spec.columns))})
    if spec.max_samples is not None:
        env.append({"name": drift.MAX_SAMPLES_ENV, "value": str(spec.max_samples)})
    return env


def _resources(spec: DriftMonitorSpec) -> dict[str, Any]:
    values = {k: v for k, v in (("cpu", spec.resources.cpu), ("memory", spec.resources.memory)) if v}
    return {"requests": dict(values), "limits": dict(values)} if values else {}


def build_check_job(inputs: JobInputs) -> dict[str, Any]:
    spec = inputs.spec
    labels = common_labels(KIND, inputs.name, component="drift-check")
    labels[UID_LABEL] = inputs.uid
    labels[CHECK_LABEL] = str(inputs.check)
    labels["mlops.dev/attempt"] = str(inputs.attempt)
    labels.update(kueue_labels(spec.scheduling))
    source = inputs.current.source
    env = [
        *_check_env(inputs),
        {"name": envvars.TERMINATION_MESSAGE_PATH, "value": TERMINATION_MESSAGE_PATH},
        {"name": "HOME", "value": "/tmp"},  # noqa: S108 - an emptyDir, not the host's /tmp
        *s3_env(
            endpoint_url=source.endpoint_url, region=source.region, credentials=source.credentials_secret_ref
        ),
    ]
    container = hardened_container(
        name=CONTAINER,
        image=spec.image or inputs.image,
        command=["mlops-trainer"],
        args=["drift"],
        env=env,
        resources=_resources(spec),
    )
    pod_spec = hardened_pod_spec(
        service_account_name=spec.service_account_name,
        containers=[container],
        scratch_size_limit=inputs.scratch_size_limit,
        shm_size_limit=SHM_SIZE_LIMIT,
    )
    apply_scheduling(
        pod_spec,
        spec.scheduling,
        uses_gpus=False,
        gpu_product=None,
        extra_tolerations=inputs.extra_tolerations,
    )
    owner = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": inputs.name, "uid": inputs.uid}}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": inputs.job_name,
            "namespace": inputs.namespace,
            "labels": labels,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "backoffLimit": 0,  # attempts are the operator's: it classifies the failure and retries
            "completions": 1,
            "parallelism": 1,
            **({"activeDeadlineSeconds": inputs.deadline_seconds} if inputs.deadline_seconds else {}),
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


# -- the result ---------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(float(value)) else None


@dataclass(frozen=True)
class DriftResult:
    drifted: bool
    fields: dict[str, Any]  # status fields
    columns: list[dict[str, Any]]


def drift_result(summary: Mapping[str, Any], output: str, reference: str) -> DriftResult | None:
    """The status a check's result summary gives; None when it carries no drift section (a workload
    that does not speak this contract)."""
    section = summary.get(drift.DRIFT)
    if not isinstance(section, Mapping):
        return None
    columns: list[dict[str, Any]] = []
    for entry in section.get(drift.COLUMNS_FIELD) or []:
        if not isinstance(entry, Mapping) or not entry.get(drift.NAME):
            continue
        column = {
            "name": str(entry[drift.NAME])[:128],
            "method": str(entry[drift.COLUMN_METHOD])[:64] if entry.get(drift.COLUMN_METHOD) else None,
            "score": _number(entry.get(drift.SCORE)),
            "threshold": _number(entry.get(drift.THRESHOLD)),
            "drifted": entry.get(drift.COLUMN_DRIFTED) is True,
        }
        columns.append({k: v for k, v in column.items() if v is not None})
    columns.sort(key=lambda c: not c["drifted"])  # drifted first, stable otherwise
    columns = columns[:MAX_STATUS_COLUMNS]
    share = _number(section.get(drift.SHARE))
    artifacts = summary.get(contract_result.ARTIFACTS)
    artifacts = artifacts if isinstance(artifacts, Mapping) else {}
    drifted_names = [c["name"] for c in columns if c["drifted"]]

    def count(key: str) -> int | None:
        value = _number(section.get(key))
        return int(value) if value is not None else None

    fields = {
        "driftShare": min(1.0, max(0.0, round(share, 6))) if share is not None else None,
        "shareThreshold": _number(section.get(drift.THRESHOLD)),
        "columnCount": count(drift.COLUMN_COUNT),
        "driftedCount": count(drift.DRIFTED_COUNT),
        "driftedColumns": ",".join(drifted_names)[:1024] or None,
        "columns": columns,
        "referenceRows": count(drift.REFERENCE_ROWS),
        "currentRows": count(drift.CURRENT_ROWS),
        "reportURI": str(artifacts.get(drift.ARTIFACT_REPORT) or f"{output}{drift.REPORT_FILE}"),
        "resultURI": str(artifacts.get(drift.ARTIFACT_RESULT) or f"{output}{drift.RESULT_FILE}"),
        "referenceURI": str(artifacts.get(drift.ARTIFACT_REFERENCE) or reference),
    }
    return DriftResult(section.get(drift.DRIFTED) is True, fields, columns)
