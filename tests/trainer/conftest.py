"""Fixtures of the trainer tests: moto's real S3 server on loopback (no S3 mocks), the digits data set
in it, and one reference training run through the real CLI that several tests inspect.

Run with the trainer's own environment: `.venv-trainer/bin/python -m pytest tests/trainer`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest
from mlops_trainer.demo_data import WrittenDataset, write_digits_dataset
from moto.server import ThreadedMotoServer

from .support import (
    BUCKET,
    DATASET_PREFIX,
    S3Server,
    TrainerRun,
    free_port,
    run_trainer,
    train_args,
    trainer_env,
)

# moto's server logs every request; on a failure that would bury the assertion.
logging.getLogger("werkzeug").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = S3Server(f"http://127.0.0.1:{port}")
    s3.client().create_bucket(Bucket=BUCKET)
    yield s3
    server.stop()


@pytest.fixture(scope="session")
def s3_client(s3_server: S3Server) -> Any:
    return s3_server.client()


@pytest.fixture(scope="session")
def digits(s3_client: Any) -> WrittenDataset:
    return write_digits_dataset(s3_client, BUCKET, DATASET_PREFIX)


@pytest.fixture(scope="session")
def reference_run(
    s3_server: S3Server, digits: WrittenDataset, tmp_path_factory: pytest.TempPathFactory
) -> TrainerRun:
    """One uninterrupted training with W&B offline, on moto S3; several tests read what it left."""
    work_dir = tmp_path_factory.mktemp("reference")
    env = trainer_env(s3_server, {"WANDB_MODE": "offline", "WANDB_PROJECT": "mlops-trainer-tests"})
    args = [*train_args("reference", work_dir=work_dir), "--dataset-fingerprint", digits.fingerprint]
    run = run_trainer(args, env, work_dir)
    assert run.returncode == 0, run.stderr[-4000:]
    return run
