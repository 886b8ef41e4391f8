"""The result contract: a JSON summary of at most 4 KiB in the termination-message file, and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from mlops_trainer.errors import ExitCode
from mlops_trainer.result import TERMINATION_MESSAGE_LIMIT, encode_summary, summary

from .support import S3Server, TrainerRun, run_trainer, s3_uri, train_args, trainer_env


def test_successful_training_summary_fits_and_carries_what_the_operator_reads(
    reference_run: TrainerRun,
) -> None:
    data = reference_run.termination_bytes
    assert 0 < len(data) <= TERMINATION_MESSAGE_LIMIT
    result = json.loads(data)
    assert result["schema"] == "mlops.dev/trainer-result/v1"
    assert (result["command"], result["status"], result["exitCode"], result["retryable"]) == (
        "train", "Succeeded", 0, False,
    )  # fmt: skip
    assert set(result["metrics"]) >= {"accuracy", "loss", "train_samples_per_second"}
    assert result["artifacts"]["onnx"].endswith("/model.onnx")
    assert result["checkpoint"]["uri"].startswith("s3://")
    assert result["checkpoint"]["step"] == result["steps"]
    assert result["wandb"]["runId"]
    assert result["wandb"]["path"].endswith(result["wandb"]["runId"])
    assert result["durationSeconds"] > 0
    # The same JSON is the last line of stdout, for people reading logs.
    assert reference_run.stdout.strip().splitlines()[-1] == data.decode()


def test_oversized_summary_is_trimmed_to_valid_json_keeping_the_outcome() -> None:
    huge: dict[str, Any] = summary(
        "train",
        ExitCode.DATA,
        reason="InvalidData",
        message="x" * 10_000,
        metrics={f"metric_{i}": float(i) for i in range(500)},
        history=[{"epoch": i, "loss": 0.5} for i in range(500)],
        artifacts={"model": "s3://bucket/" + "k" * 3000},
    )
    data = encode_summary(huge)
    assert len(data) <= TERMINATION_MESSAGE_LIMIT
    trimmed = json.loads(data)
    assert trimmed["truncated"] is True
    assert (trimmed["status"], trimmed["exitCode"], trimmed["reason"], trimmed["retryable"]) == (
        "Failed", 65, "InvalidData", False,
    )  # fmt: skip
    assert trimmed["message"].startswith("xxxx")
    # Only what did not fit was dropped: a summary that fits is left whole.
    small = summary("train", ExitCode.SUCCESS, metrics={"accuracy": 0.97})
    assert json.loads(encode_summary(small)) == small


@pytest.mark.parametrize("text", ['"\\\n', "é", "日本"])
def test_message_with_many_escaped_characters_still_fits_and_keeps_what_fits(text: str) -> None:
    message = text * 5000
    data = encode_summary(summary("train", ExitCode.INTERNAL, reason="InternalError", message=message))
    assert len(data) <= TERMINATION_MESSAGE_LIMIT
    kept = json.loads(data)
    assert kept["retryable"] is True
    # As much of the message as fits (each character is 2 to 6 bytes of JSON here), not a stub of it.
    assert kept["message"].endswith("…")
    assert message.startswith(kept["message"][:-1])
    assert len(kept["message"]) > 600


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        (
            "--hyperparameters",
            '{"epochs": "many"}',
            (ExitCode.CONFIG, "InvalidConfig", "epochs must be a number"),
        ),
        ("--model", "resnet-9000", (ExitCode.CONFIG, "InvalidConfig", "unknown model 'resnet-9000'")),
        ("--dataset-uri", s3_uri("datasets/nowhere"), (ExitCode.DATA, "InvalidData", "datasets/nowhere")),
    ],
)
def test_bad_input_fails_permanently_with_a_precise_message(
    s3_server: S3Server, flag: str, value: str, expected: tuple[ExitCode, str, str], tmp_path: Path
) -> None:
    code, reason, fragment = expected
    args = train_args("bad-input", work_dir=tmp_path)
    args[args.index(flag) + 1] = value
    run = run_trainer(args, trainer_env(s3_server), tmp_path)
    assert run.returncode == code
    assert (run.summary["status"], run.summary["reason"], run.summary["retryable"]) == (
        "Failed",
        reason,
        False,
    )
    assert fragment in run.summary["message"]
