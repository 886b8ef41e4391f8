"""W&B tracking with the real wandb library in offline mode: the run directory holds the metrics."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

from .support import REFERENCE_HYPERPARAMETERS, WANDB_KEY_SENTINEL, TrainerRun

_BLOCK_SIZE = 32768  # the .wandb transaction log is LevelDB's log format: 32 KiB blocks
_RECORD_HEADER = 7  # crc32 (4), length (2), type (1)
_FILE_HEADER = 7  # ":W&B", magic (2), version (1)


def read_wandb_records(path: Path) -> list[Any]:
    """Decode an offline run's transaction log (what `wandb sync` would upload)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    payloads: list[bytes] = []
    partial = b""
    position = _FILE_HEADER
    while position + _RECORD_HEADER <= len(data):
        left_in_block = _BLOCK_SIZE - position % _BLOCK_SIZE
        if left_in_block < _RECORD_HEADER:
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position : position + _RECORD_HEADER])
        if kind == 0 and length == 0:
            break
        chunk = data[position + _RECORD_HEADER : position + _RECORD_HEADER + length]
        position += _RECORD_HEADER + length
        if kind == 1:  # full
            payloads.append(chunk)
        elif kind == 2:  # first
            partial = chunk
        elif kind == 3:  # middle
            partial += chunk
        elif kind == 4:  # last
            payloads.append(partial + chunk)
    records = []
    for payload in payloads:
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
        record.ParseFromString(payload)
        records.append(record)
    return records


def _key(item: Any) -> str:
    return str(item.key or "/".join(item.nested_key))


def test_offline_run_directory_holds_config_metrics_and_model_artifact(reference_run: TrainerRun) -> None:
    wandb_info = reference_run.summary["wandb"]
    assert wandb_info["mode"] == "offline"
    assert wandb_info["url"] is None
    run_dir = Path(wandb_info["dir"])
    assert run_dir.is_dir()
    assert run_dir.name.startswith("offline-run-")
    (log_file,) = run_dir.glob("run-*.wandb")
    records = read_wandb_records(log_file)

    history = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
    train_steps = sorted(row["_step"] for row in history if "train/loss" in row)
    # One train/loss row per optimizer step, steps 1..N.
    assert train_steps == list(range(1, reference_run.summary["steps"] + 1))
    val_rows = [row for row in history if "val/accuracy" in row]
    assert len(val_rows) == REFERENCE_HYPERPARAMETERS["epochs"]
    assert val_rows[-1]["val/accuracy"] >= 0.95

    run_record = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    config = {_key(item): json.loads(item.value_json) for item in run_record.config.update}
    assert config["model"] == "digits-cnn"
    assert config["hyperparameters"]["batch_size"] == REFERENCE_HYPERPARAMETERS["batchSize"]

    artifacts = [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]
    assert [a.type for a in artifacts] == ["model"]
    assert artifacts[0].name == "model-reference"
    assert {entry.path for entry in artifacts[0].manifest.contents} == {
        "model.pt",
        "model.onnx",
        "metadata.json",
    }


def test_api_key_never_appears_in_outputs(reference_run: TrainerRun) -> None:
    sentinel = WANDB_KEY_SENTINEL.encode()
    assert sentinel not in reference_run.termination_bytes
    assert WANDB_KEY_SENTINEL not in reference_run.stdout
    assert WANDB_KEY_SENTINEL not in reference_run.stderr
    leaked = [p for p in reference_run.work_dir.rglob("*") if p.is_file() and sentinel in p.read_bytes()]
    assert leaked == []
