"""Secrets never reach status, events or logs: the redaction patterns, and where they are applied."""

from __future__ import annotations

import json
import logging

import pytest
from mlops_contract import result as trainer_result
from mlops_contract.exitcodes import ExitCode

from mlops_operator.handlers.base import Outcome, status_patch
from mlops_operator.k8s.conditions import ConditionUpdate
from mlops_operator.k8s.events import Event, event_manifest
from mlops_operator.observation.training import classify_pod_failure
from mlops_operator.redaction import RedactingFilter, redact, secure_logging

AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # 40 characters, base64-ish
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"  # 40 hex characters
BEARER = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ0ZW5hbnQifQ.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}", AWS_SECRET),
        (f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET),
        (f"{{'AWS_SECRET_ACCESS_KEY': '{AWS_SECRET}', 'HOME': '/tmp'}}", AWS_SECRET),
        (f'{{"SecretAccessKey": "{AWS_SECRET}"}}', AWS_SECRET),
        (f"secretAccessKey: {AWS_SECRET}", AWS_SECRET),
        (f"key {AWS_KEY_ID} rejected", AWS_KEY_ID),
        (f"S3 said key {AWS_SECRET} is wrong", AWS_SECRET),
        (f"AWS_ACCESS_KEY_ID={AWS_KEY_ID}", AWS_KEY_ID),
        (f"Authorization: Bearer {BEARER}", BEARER),
        (f"-H 'authorization: bearer {BEARER}'", BEARER),
        (f"sent Bearer {BEARER} to the API", BEARER),
        ("Authorization: Basic dXNlcjpodW50ZXIy", "dXNlcjpodW50ZXIy"),
        (f"WANDB_API_KEY={WANDB_KEY}", WANDB_KEY),
        (f"wandb login {WANDB_KEY}", WANDB_KEY),
        (f"wandb login --relogin {WANDB_KEY}", WANDB_KEY),
        (f"wandb: ERROR API key {WANDB_KEY} is invalid", WANDB_KEY),
        ('{"api_key": "0123456789abcdef"}', "0123456789abcdef"),
        ("failed with token: abc.def.ghi", "abc.def.ghi"),
        ("password=hunter2, retrying", "hunter2"),
        ("DB_PASSWORD='hunter2'", "hunter2"),
        ("GITHUB_TOKEN=ghp_abcdefghijklmnop", "ghp_abcdefghijklmnop"),
        ("refresh_token=r3fr3sh-v4lue", "r3fr3sh-v4lue"),
        ("https://user:hunter2@example.com/x", "hunter2"),
        ("GET /b/k?X-Amz-Signature=deadbeefcafe&X-Amz-Security-Token=FQoGZXIvYXdz", "FQoGZXIvYXdz"),
        ("GET /b/k?X-Amz-Signature=deadbeefcafe&X-Amz-Security-Token=FQoGZXIvYXdz", "deadbeefcafe"),
    ],
)
def test_redact_masks_credentials(text, leak):
    out = redact(text)
    assert leak not in out
    assert "***" in out
    assert redact(out) == out  # idempotent: a redacted status compares equal, no write loop


@pytest.mark.parametrize(
    "text",
    [
        "Dataset digits is not Ready: ContractViolated (2 objects, want at least 3)",
        "attempt 2 failed (OOMKilled: the trainer ran out of memory; raise resources.memory)",
        "Secret s3-credentials has no key AWS_SECRET_ACCESS_KEY",
        "fingerprint sha256:" + "ab" * 32,
        "s3://bucket/models/" + "0a" * 32 + "/model.onnx",  # a sha256 path segment is not a key
        "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.",
        "s3://bucket/ModelsForTheDigitsCnnRun1/Step0000040Checkpoint",  # path segments stay
        "a-very-long-kubernetes-object-name-of-forty-one",
        'spec.template.spec.containers[0].env[3].valueFrom.secretKeyRef.name: Invalid value: "S3"',
        "spec.source.credentialsSecretRef.name: should match",
    ],
)
def test_redact_keeps_ordinary_messages(text):
    assert redact(text) == text


def test_status_patch_redacts_conditions_and_fields_but_not_the_pin():
    outcome = Outcome(
        phase="Failed",
        conditions=(ConditionUpdate("Ready", "False", "TrainerFailed", f"boom WANDB_API_KEY={WANDB_KEY}"),),
        fields={
            "failures": [{"attempt": 1, "reason": "TrainerFailed", "message": f"token={BEARER}"}],
            "pinned": {"spec": {"hyperparameters": {"token": "x", "password": "hunter2=ok"}}},
        },
    )
    patch, transitions = status_patch({}, outcome, 1, now="2026-01-01T00:00:00Z")
    text = repr(patch) + repr(transitions)
    assert WANDB_KEY not in text
    assert BEARER not in text
    assert patch["pinned"] == outcome.fields["pinned"]
    # Writing the same outcome over the redacted status changes nothing.
    again, _ = status_patch(patch, outcome, 1, now="2026-01-01T00:00:01Z")
    assert again == {}


def test_events_are_redacted():
    obj = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r", "namespace": "n"},
    }
    manifest = event_manifest(obj, Event("AttemptFailed", f"Authorization: Bearer {BEARER}"))
    assert BEARER not in manifest["message"]


def _failed_pod(message: str, exit_code: int = 1) -> dict:
    terminated = {"exitCode": exit_code, "reason": "Error", "message": message}
    return {
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
        }
    }


def test_a_log_tail_is_redacted_before_it_is_cut():
    # The secret's key sits just before the last 1024 characters: cutting first would keep the value.
    tail = f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}" + " " + "x" * 1000
    failure = classify_pod_failure(_failed_pod(tail))
    assert AWS_SECRET[-20:] not in failure.message


def test_a_trainer_summary_message_is_redacted():
    message = trainer_result.summary(
        "train", ExitCode.CONFIG, reason="Unauthorized", message=f"wandb login {WANDB_KEY} failed"
    )
    failure = classify_pod_failure(_failed_pod(json.dumps(message)))
    assert failure.reason == "Unauthorized"
    assert WANDB_KEY not in failure.message


def test_log_lines_and_tracebacks_are_redacted(caplog):
    logger = logging.getLogger("mlops_operator.test_redaction")
    handler = logging.StreamHandler()
    records: list[str] = []
    handler.emit = lambda record: records.append(handler.format(record))  # type: ignore[method-assign]
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    try:
        logger.warning("client failed: %s", f"Authorization: Bearer {BEARER}")
        try:
            raise RuntimeError(f"password={AWS_SECRET}")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert BEARER not in text
    assert AWS_SECRET not in text
    assert "RuntimeError" in text


def test_secure_logging_keeps_wire_loggers_above_debug():
    root = logging.getLogger("mlops_operator.test_root")
    root.addHandler(logging.NullHandler())
    botocore = logging.getLogger("botocore")
    before = botocore.level
    botocore.setLevel(logging.DEBUG)
    try:
        secure_logging(root)
        assert not botocore.isEnabledFor(logging.DEBUG)
        assert any(isinstance(f, RedactingFilter) for f in root.handlers[0].filters)
    finally:
        botocore.setLevel(before)


# -- planted secrets in everything a workload controls ---------------------------------------------
# A workload writes its result summary (mlops_contract.result) into its termination message: `reason`,
# `message`, the names of `metrics`, `checkpoint.uri`, `wandb.path`/`runId`, `artifacts`, `details`.
# A secret planted in any of them, bare, glued to other characters or inside a path, must not reach
# status or events.

GLUED_KEY_ID = f"id_{AWS_KEY_ID}"
RUN_OBJECT = {
    "apiVersion": "mlops.dev/v1alpha1",
    "kind": "TrainingRun",
    "metadata": {"name": "r", "namespace": "n"},
}
PLANTED = (AWS_KEY_ID, WANDB_KEY, AWS_SECRET, BEARER)


def _assert_no_secret(text: str) -> None:
    for secret in PLANTED:
        assert secret not in text
        assert secret[4:-4] not in text  # not even most of it


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (GLUED_KEY_ID, AWS_KEY_ID),
        (f"key{AWS_KEY_ID}x", AWS_KEY_ID),
        (f"entity/project/runs/{WANDB_KEY}", WANDB_KEY),
        (f"s3://bucket/checkpoints/{WANDB_KEY}/step-10.pt", WANDB_KEY),
        (f"s3://bucket/run_{WANDB_KEY}.pt", WANDB_KEY),
    ],
)
def test_redact_masks_secrets_glued_or_inside_paths(text, leak):
    out = redact(text)
    assert leak not in out
    assert redact(out) == out


def test_redact_keeps_other_digests_in_paths():
    # A sha256 (64 hex digits) or an MLflow run id (32) is not a W&B key, even as a path segment.
    for text in (f"s3://b/engines/{'ab' * 32}/model.plan", f"mlflow-artifacts:/1/{'0f' * 16}/artifacts"):
        assert redact(text) == text


def _succeeded_run(summary: dict) -> Outcome:
    from datetime import UTC, datetime

    from mlops_operator.api.v1alpha1 import TrainingRunSpec
    from mlops_operator.engine.cache import Cache
    from mlops_operator.handlers import trainingrun
    from mlops_operator.handlers.context import ReconcileContext
    from tests.samples import load, valid_samples

    run = load(next(p for p in valid_samples() if "trainingrun" in p.name))
    spec = TrainingRunSpec.model_validate(run["spec"])
    now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def owned(kind: str, name: str, owner: str, uid: str, **extra: object) -> dict:
        meta = {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "resourceVersion": "1",
            "ownerReferences": [{"uid": owner, "controller": True, "kind": "X", "name": "x"}],
        }
        return {"kind": kind, "metadata": meta, **extra}

    terminated = {"exitCode": 0, "reason": "Completed", "message": json.dumps(summary)}
    body = {"metadata": {"name": "r", "namespace": "ns", "uid": "run-uid", "generation": 1}}
    cache = Cache()
    cache.upsert("TrainingRun", {"kind": "TrainingRun", **body})  # owners are matched in the cache
    complete = {"type": "Complete", "status": "True", "lastTransitionTime": "2026-01-01T12:00:00Z"}
    cache.upsert("Job", owned("Job", "r-a1", "run-uid", "job-uid", status={"conditions": [complete]}))
    pod_status = {
        "phase": "Succeeded",
        "containerStatuses": [{"name": "trainer", "state": {"terminated": terminated}}],
    }
    cache.upsert("Pod", owned("Pod", "r-a1-x", "job-uid", "pod-uid", status=pod_status))
    status = {
        "phase": "Running",
        "attempt": 1,
        "jobName": "r-a1",
        "attemptStartTime": "2026-01-01T11:00:00Z",
        "startTime": "2026-01-01T11:00:00Z",
        "specHash": trainingrun.spec_hash(spec),
        "observedGeneration": 1,
    }
    body = {**body, "status": status}
    outcome = trainingrun.reconcile(spec, ReconcileContext(body, None, now=lambda: now, cache=cache))
    assert isinstance(outcome, Outcome)
    return outcome


def test_secrets_planted_in_a_succeeded_runs_result_reach_neither_status_nor_events():
    summary = trainer_result.summary(
        "train",
        ExitCode.SUCCESS,
        message=f"done; debug {GLUED_KEY_ID} {AWS_SECRET} Bearer {BEARER}",
        metrics={
            "accuracy": 0.5,
            f"loss_{AWS_KEY_ID}": 0.1,
            WANDB_KEY: 0.2,
            f"AWS_SECRET_ACCESS_KEY={AWS_SECRET}": 0.3,
        },
        checkpoint={"uri": f"s3://bucket/checkpoints/{WANDB_KEY}/step-10", "step": 10},
        wandb={"runId": WANDB_KEY, "path": f"entity/project/runs/{WANDB_KEY}"},
        artifacts={"model": f"s3://bucket/models/{GLUED_KEY_ID}/model.pt"},
        details={"note": f"token={BEARER}"},
    )
    outcome = _succeeded_run(summary)
    assert outcome.phase == "Succeeded"
    patch, transitions = status_patch({}, outcome, 1, now="2026-01-01T12:00:00Z")
    obj = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r", "namespace": "n"},
    }
    events = [event_manifest(obj, Event(t.reason, t.message)) for t in transitions]
    _assert_no_secret(json.dumps(patch) + json.dumps(events))
    # What is not a secret is still there: the run's accuracy, and a path with its key masked.
    assert patch["metrics"]["accuracy"] == 0.5
    assert len(patch["metrics"]) == 4
    assert patch["checkpointURI"] == "s3://bucket/checkpoints/***/step-10"
    assert patch["wandbRun"] == "entity/project/runs/***"
    again, _ = status_patch(patch, outcome, 1, now="2026-01-01T12:00:01Z")
    assert again == {}  # idempotent: no write loop


def test_secrets_planted_in_a_failed_runs_reason_and_message_reach_neither_status_nor_events():
    summary = trainer_result.summary(
        "train",
        ExitCode.CONFIG,
        reason=f"Leak{AWS_KEY_ID}",
        message=f"wandb rejected {WANDB_KEY} for s3://b/{GLUED_KEY_ID}/x",
    )
    failure = classify_pod_failure(_failed_pod(json.dumps(summary)))
    outcome = Outcome(
        phase="Failed",
        conditions=(ConditionUpdate("Ready", "False", failure.reason, failure.message),),
        fields={"failures": [{"attempt": 1, "reason": failure.reason, "message": failure.message}]},
    )
    patch, transitions = status_patch({}, outcome, 1, now="2026-01-01T12:00:00Z")
    obj = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r", "namespace": "n"},
    }
    events = [event_manifest(obj, Event(t.reason, t.message, "Warning")) for t in transitions]
    events.append(event_manifest(obj, Event(failure.reason, failure.message, "Warning")))
    _assert_no_secret(json.dumps(patch) + json.dumps(events))
    assert patch["conditions"][0]["reason"] == "Leak"


def test_status_patch_redacts_the_keys_of_every_mapping():
    # The ModelVersion's fields from a compile or evaluate result: engine details, metrics, runtime.
    outcome = Outcome(
        phase="Evaluating",
        conditions=(),
        fields={
            "engine": {"gpu": GLUED_KEY_ID, "uri": f"s3://b/{WANDB_KEY}/model.plan", "runtime": AWS_SECRET},
            "metrics": {f"acc_{AWS_KEY_ID}": 1.0, WANDB_KEY: 2.0},
            "gates": [{"name": f"gate-{WANDB_KEY}", "message": f"{AWS_KEY_ID} >= 0.9"}],
        },
    )
    patch, _ = status_patch({}, outcome, 1, now="2026-01-01T12:00:00Z")
    _assert_no_secret(json.dumps(patch))
    assert sorted(patch["metrics"].values()) == [1.0, 2.0]


def test_a_secret_across_the_cut_of_a_metric_name_or_uri_is_masked_not_halved():
    # Names are cut to 128 characters and URIs to 1024: a secret straddling the cut, redacted after
    # it, would no longer look like one and half of it would stay.
    long_key = "m" * 110 + "_" + AWS_SECRET
    long_uri = "s3://bucket/" + "d/" * 496 + WANDB_KEY + "/step-10.pt"
    summary = trainer_result.summary(
        "train",
        ExitCode.SUCCESS,
        metrics={"accuracy": 0.5, long_key: 0.1},
        checkpoint={"uri": long_uri, "step": 10},
    )
    outcome = _succeeded_run(summary)
    patch, _ = status_patch({}, outcome, 1, now="2026-01-01T12:00:00Z")
    text = json.dumps(patch)
    assert AWS_SECRET[:17] not in text
    assert WANDB_KEY[:14] not in text
    assert "m" * 110 + "_***" in patch["metrics"]
    assert "/***/step-10.pt" in patch["checkpointURI"]  # masked first, it fits whole
