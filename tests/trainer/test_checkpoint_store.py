"""Checkpoint atomicity on S3: a torn or corrupted newest checkpoint falls back to the previous valid one."""

from __future__ import annotations

import json
from typing import Any

import torch
from mlops_trainer.checkpoint import LATEST_KEY, CheckpointStore
from mlops_trainer.storage import S3ObjectStore

from .support import BUCKET


def _store(s3_client: Any, name: str, keep: int = 3) -> CheckpointStore:
    return CheckpointStore(S3ObjectStore(BUCKET, f"checkpoint-store/{name}", s3_client), keep=keep)


def _keys(s3_client: Any, name: str) -> list[str]:
    listing = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=f"checkpoint-store/{name}/")
    return sorted(o["Key"].rsplit("/", 1)[1] for o in listing.get("Contents", []))


def test_latest_pointer_is_written_last_and_old_checkpoints_are_pruned(s3_client: Any) -> None:
    store = _store(s3_client, "prune", keep=2)
    for step in (10, 20, 30):
        store.save({"weights": torch.full((4,), float(step))}, step=step, epoch=0)
    assert _keys(s3_client, "prune") == [
        LATEST_KEY, "step-00000020.json", "step-00000020.pt", "step-00000030.json", "step-00000030.pt",
    ]  # fmt: skip
    loaded = store.load_latest()
    assert loaded is not None
    assert loaded.record.step == 30
    assert torch.equal(loaded.state["weights"], torch.full((4,), 30.0))


def test_corrupted_newest_checkpoint_falls_back_to_the_previous_valid_one(s3_client: Any) -> None:
    store = _store(s3_client, "corrupt")
    store.save({"weights": torch.ones(3)}, step=10, epoch=0)
    store.save({"weights": torch.zeros(3)}, step=20, epoch=0)
    key = "checkpoint-store/corrupt/step-00000020.pt"
    data = bytearray(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[-10] ^= 0xFF
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))
    loaded = store.load_latest()
    assert loaded is not None
    assert loaded.record.step == 10
    assert torch.equal(loaded.state["weights"], torch.ones(3))


def test_a_write_killed_before_the_pointer_leaves_the_previous_checkpoint_latest(s3_client: Any) -> None:
    store = _store(s3_client, "torn")
    store.save({"weights": torch.ones(2)}, step=10, epoch=0)
    # What a process killed mid-save leaves: the bytes of step 20 (maybe partial), no record, old pointer.
    s3_client.put_object(Bucket=BUCKET, Key="checkpoint-store/torn/step-00000020.pt", Body=b"partial")
    s3_client.put_object(Bucket=BUCKET, Key="checkpoint-store/torn/_tmp/step-00000030.pt.dead", Body=b"x")
    loaded = store.load_latest()
    assert loaded is not None
    assert loaded.record.step == 10
    # A pointer that names bytes which do not match is not trusted either.
    record = json.loads(
        s3_client.get_object(Bucket=BUCKET, Key="checkpoint-store/torn/latest.json")["Body"].read()
    )
    record |= {"step": 20, "key": "step-00000020.pt"}
    s3_client.put_object(
        Bucket=BUCKET, Key="checkpoint-store/torn/latest.json", Body=json.dumps(record).encode()
    )
    loaded = store.load_latest()
    assert loaded is not None
    assert loaded.record.step == 10


def test_empty_prefix_means_a_fresh_start(s3_client: Any) -> None:
    assert _store(s3_client, "empty").load_latest() is None
