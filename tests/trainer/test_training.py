"""Training through the real CLI against moto's S3 server: accuracy, kill-and-resume, SIGTERM, torchrun."""

from __future__ import annotations

import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

from mlops_trainer.demo_data import WrittenDataset
from mlops_trainer.errors import ExitCode

from .support import (
    BUCKET,
    CHECKPOINT_INTERVAL,
    REFERENCE_HYPERPARAMETERS,
    S3Server,
    TrainerRun,
    finish_trainer,
    run_trainer,
    start_trainer,
    train_args,
    trainer_env,
)

TRAIN_RECORDS = 1437  # the stratified 80% of sklearn's 1797 digits


def _latest_checkpoint_step(s3_client: Any, prefix: str) -> int | None:
    try:
        body = s3_client.get_object(Bucket=BUCKET, Key=f"{prefix}/latest.json")["Body"].read()
    except s3_client.exceptions.NoSuchKey:
        return None
    return int(json.loads(body)["step"])


def _expected_steps(hyperparameters: dict[str, Any], world_size: int = 1) -> int:
    per_rank = math.ceil(TRAIN_RECORDS / world_size)
    return int(hyperparameters["epochs"]) * math.ceil(per_rank / int(hyperparameters["batchSize"]))


def test_trains_digits_to_held_out_accuracy_reading_and_writing_s3(
    reference_run: TrainerRun, s3_client: Any
) -> None:
    summary = reference_run.summary
    assert summary["status"] == "Succeeded"
    assert summary["metrics"]["accuracy"] >= 0.95
    assert summary["steps"] == _expected_steps(REFERENCE_HYPERPARAMETERS)
    assert summary["artifacts"] == {
        "model": f"s3://{BUCKET}/models/reference/model.pt",
        "onnx": f"s3://{BUCKET}/models/reference/model.onnx",
        "metadata": f"s3://{BUCKET}/models/reference/metadata.json",
    }
    metadata = json.loads(
        s3_client.get_object(Bucket=BUCKET, Key="models/reference/metadata.json")["Body"].read()
    )
    assert metadata["metrics"]["accuracy"] == summary["metrics"]["accuracy"]
    assert metadata["input"] == {"name": "images", "dtype": "float32", "shape": [-1, 1, 8, 8]}
    assert metadata["dataset"]["fingerprint"] == summary["dataset"]["fingerprint"]
    onnx_size = s3_client.head_object(Bucket=BUCKET, Key="models/reference/model.onnx")["ContentLength"]
    assert onnx_size == metadata["onnx"]["sizeBytes"]
    # The final checkpoint is the last step, and older ones were pruned to the kept three.
    assert _latest_checkpoint_step(s3_client, "checkpoints/reference") == summary["steps"]
    keys = [
        o["Key"]
        for o in s3_client.list_objects_v2(Bucket=BUCKET, Prefix="checkpoints/reference/")["Contents"]
    ]
    assert len([k for k in keys if k.endswith(".pt")]) == 3
    assert not [k for k in keys if "/_tmp/" in k], "temporary upload keys must be cleaned up"


def test_killed_run_resumes_to_the_same_step_count_and_comparable_metrics(
    s3_server: S3Server, s3_client: Any, digits: WrittenDataset, reference_run: TrainerRun, tmp_path: Path
) -> None:
    env = trainer_env(s3_server)
    termination = tmp_path / "termination-log"
    first = start_trainer(
        [*train_args("killed", work_dir=tmp_path), "--termination-message-path", str(termination)], env
    )
    deadline = time.monotonic() + 120
    killed_after: int | None = None
    while time.monotonic() < deadline and first.poll() is None:
        killed_after = _latest_checkpoint_step(s3_client, "checkpoints/killed")
        if killed_after is not None:
            first.send_signal(signal.SIGKILL)  # no chance to clean up: as a lost node
            break
        time.sleep(0.05)
    first.communicate(timeout=30)
    assert killed_after is not None, "the run ended before its first checkpoint"
    assert first.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert killed_after < reference_run.summary["steps"]

    resumed = run_trainer(train_args("killed", work_dir=tmp_path), env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    checkpoint = resumed.summary["checkpoint"]
    assert checkpoint["resumedFromStep"] is not None
    assert checkpoint["resumedFromStep"] >= killed_after
    assert resumed.summary["steps"] == reference_run.summary["steps"]
    assert abs(resumed.summary["metrics"]["accuracy"] - reference_run.summary["metrics"]["accuracy"]) <= 0.02
    assert resumed.summary["metrics"]["accuracy"] >= 0.95


def test_sigterm_checkpoints_then_exits_with_the_retryable_code(
    s3_server: S3Server, s3_client: Any, digits: WrittenDataset, tmp_path: Path
) -> None:
    hyperparameters = {**REFERENCE_HYPERPARAMETERS, "epochs": 30}  # long enough to be interrupted
    termination = tmp_path / "termination-log"
    process = start_trainer(
        [*train_args("preempted", hyperparameters=hyperparameters, work_dir=tmp_path),
         "--termination-message-path", str(termination)],
        trainer_env(s3_server),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if _latest_checkpoint_step(s3_client, "checkpoints/preempted") is not None:
            break  # training is under way
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)  # what the kubelet sends on eviction or preemption
    run = finish_trainer(process, termination, tmp_path)
    assert run.returncode == ExitCode.RETRYABLE, run.stderr[-4000:]
    assert run.summary["status"] == "Preempted"
    assert run.summary["retryable"] is True
    assert run.summary["reason"] == "Preempted"
    stopped_at = run.summary["steps"]
    assert 0 < stopped_at < _expected_steps(hyperparameters)
    # It checkpointed the step it stopped at, not only the last interval's step.
    assert run.summary["checkpoint"]["step"] == stopped_at
    assert _latest_checkpoint_step(s3_client, "checkpoints/preempted") == stopped_at


def test_two_process_torchrun_with_gloo(
    s3_server: S3Server, s3_client: Any, digits: WrittenDataset, tmp_path: Path
) -> None:
    hyperparameters = {**REFERENCE_HYPERPARAMETERS, "epochs": 3, "numWorkers": 0}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m"]
    run = run_trainer(
        train_args("ddp", hyperparameters=hyperparameters, work_dir=tmp_path),
        trainer_env(s3_server),
        tmp_path,
        launcher=launcher,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    summary = run.summary
    assert summary["worldSize"] == 2
    assert summary["rank"] == 0, "only local rank 0 writes the termination message"
    assert summary["steps"] == _expected_steps(hyperparameters, world_size=2)
    assert summary["metrics"]["accuracy"] >= 0.9
    # Rank 0 alone wrote artifacts and checkpoints: one object per name, no duplicates from rank 1.
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=BUCKET, Prefix="models/ddp/")["Contents"]]
    assert sorted(keys) == [
        "models/ddp/input_example.json",
        "models/ddp/metadata.json",
        "models/ddp/model.onnx",
        "models/ddp/model.pt",
        "models/ddp/serving_input_example.json",
    ]

    # The input example (the registered MLflow Model's): one held-out sample as the model takes it.
    def read(key: str) -> Any:
        return json.loads(s3_client.get_object(Bucket=BUCKET, Key=f"models/ddp/{key}")["Body"].read())

    example = read("input_example.json")
    assert [len(example), len(example[0]), len(example[0][0]), len(example[0][0][0])] == [1, 1, 8, 8]
    assert read("serving_input_example.json") == {"inputs": example}
    assert read("metadata.json")["inputExample"] == {
        "key": "input_example.json",
        "servingKey": "serving_input_example.json",
    }
    assert _latest_checkpoint_step(s3_client, "checkpoints/ddp") == summary["steps"]
    assert summary["steps"] > CHECKPOINT_INTERVAL
