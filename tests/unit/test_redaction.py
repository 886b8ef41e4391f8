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
        "s3://bucket/models/" + "0a" * 20 + "/model.onnx",  # a 40-hex path segment is not a key
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
