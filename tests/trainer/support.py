"""Helpers of the trainer tests: the S3 server handle, and the real `mlops-trainer` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3

BUCKET = "mlops-trainer-tests"
DATASET_PREFIX = "datasets/digits/v1"
ACCESS_KEY_ID = "trainer-tests"
SECRET_ACCESS_KEY = "trainer-tests-secret"
REGION = "us-east-1"
# Sent as WANDB_API_KEY to every trainer process; it must never show up in any output.
WANDB_KEY_SENTINEL = "wandb-key-sentinel-9f1c2e7d"
# Enough to pass 0.95 held-out accuracy with margin on digits, small enough for 2 CPU cores.
REFERENCE_HYPERPARAMETERS = {
    "epochs": 4,
    "batchSize": 32,
    "learningRate": 0.002,
    "numWorkers": 1,
    "logEverySteps": 5,
}
CHECKPOINT_INTERVAL = 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class S3Server:
    endpoint_url: str

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key=SECRET_ACCESS_KEY,
        )

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY,
            "AWS_REGION": REGION,
        }


def s3_uri(prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}"


@dataclass(frozen=True)
class TrainerRun:
    returncode: int
    summary: dict[str, Any]
    termination_bytes: bytes
    stdout: str
    stderr: str
    work_dir: Path


def trainer_env(s3: S3Server, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("MLOPS_", "WANDB_", "AWS_"))
    }
    env |= s3.env()
    env |= {"WANDB_API_KEY": WANDB_KEY_SENTINEL, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env |= dict(extra or {})
    return env


def start_trainer(
    args: list[str], env: Mapping[str, str], *, launcher: list[str] | None = None
) -> subprocess.Popen[str]:
    command = [*(launcher or [sys.executable, "-m"]), "mlops_trainer", *args]
    return subprocess.Popen(command, env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_trainer(
    process: subprocess.Popen[str], termination_path: Path, work_dir: Path, timeout: float = 240
) -> TrainerRun:
    stdout, stderr = process.communicate(timeout=timeout)
    data = termination_path.read_bytes() if termination_path.exists() else b""
    summary = json.loads(data) if data else {}
    return TrainerRun(process.returncode, summary, data, stdout, stderr, work_dir)


def run_trainer(
    args: list[str],
    env: Mapping[str, str],
    work_dir: Path,
    *,
    launcher: list[str] | None = None,
    timeout: float = 240,
) -> TrainerRun:
    work_dir.mkdir(parents=True, exist_ok=True)
    termination = work_dir / "termination-log"
    process = start_trainer([*args, "--termination-message-path", str(termination)], env, launcher=launcher)
    return finish_trainer(process, termination, work_dir, timeout)


def train_args(name: str, *, hyperparameters: Mapping[str, Any] | None = None, work_dir: Path) -> list[str]:
    return [
        "train",
        "--model", "digits-cnn",
        "--dataset-uri", s3_uri(DATASET_PREFIX),
        "--output-uri", s3_uri(f"models/{name}"),
        "--checkpoint-uri", s3_uri(f"checkpoints/{name}"),
        "--checkpoint-interval-steps", str(CHECKPOINT_INTERVAL),
        "--hyperparameters", json.dumps(dict(hyperparameters or REFERENCE_HYPERPARAMETERS)),
        "--run-name", name,
        "--work-dir", str(work_dir),
    ]  # fmt: skip
