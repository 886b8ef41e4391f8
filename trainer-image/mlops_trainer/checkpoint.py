"""Atomic checkpoints with a `latest` pointer, and resume from the newest valid one.

Layout under the checkpoint URI:

    step-00000500.pt      torch.save of model, optimizer, scheduler, step/epoch, RNG states
    step-00000500.json    {"step", "epoch", "key", "size", "sha256", "createdAt", ...}
    latest.json           the same record as the newest step-*.json, written last

Write order: checkpoint bytes (temp key, then copy), its record, then `latest.json`. A reader trusts
a checkpoint only when its bytes match the record's size and sha256, so a process killed at any
point leaves either the previous checkpoint or the new one as the latest valid checkpoint.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import torch

from .errors import DataError
from .storage import ObjectMissingError, ObjectStore, sha256_hex

LATEST_KEY = "latest.json"
_RECORD = re.compile(r"^step-(\d{8,})\.json$")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointRecord:
    step: int
    epoch: int
    key: str
    size: int
    sha256: str
    created_at: float

    def to_json(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "epoch": self.epoch,
            "key": self.key,
            "size": self.size,
            "sha256": self.sha256,
            "createdAt": self.created_at,
        }

    @classmethod
    def from_json(cls, data: bytes) -> CheckpointRecord:
        raw = json.loads(data)
        return cls(
            step=int(raw["step"]),
            epoch=int(raw["epoch"]),
            key=str(raw["key"]),
            size=int(raw["size"]),
            sha256=str(raw["sha256"]),
            created_at=float(raw["createdAt"]),
        )


@dataclass(frozen=True)
class LoadedCheckpoint:
    record: CheckpointRecord
    state: dict[str, Any]


class CheckpointStore:
    def __init__(self, store: ObjectStore, keep: int = 3) -> None:
        self.store = store
        self.keep = keep

    def uri(self, key: str = "") -> str:
        return self.store.uri(key)

    def save(self, state: dict[str, Any], *, step: int, epoch: int) -> CheckpointRecord:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
        key = f"step-{step:08d}.pt"
        record = CheckpointRecord(step, epoch, key, len(data), sha256_hex(data), time.time())
        self.store.write_atomic(key, data)
        record_bytes = json.dumps(record.to_json(), sort_keys=True).encode()
        self.store.write_atomic(f"step-{step:08d}.json", record_bytes)
        self.store.write_atomic(LATEST_KEY, record_bytes)
        self._prune(step)
        return record

    def _records(self) -> list[int]:
        steps = [int(m.group(1)) for info in self.store.list() if (m := _RECORD.match(info.key))]
        return sorted(steps, reverse=True)

    def _prune(self, newest: int) -> None:
        """Delete all but the `keep` newest checkpoints (records first, so none points to deleted bytes)."""
        for step in [s for s in self._records() if s <= newest][self.keep :]:
            self.store.delete(f"step-{step:08d}.json")
            self.store.delete(f"step-{step:08d}.pt")

    def _load(self, record: CheckpointRecord) -> LoadedCheckpoint:
        data = self.store.read(record.key)
        if len(data) != record.size or sha256_hex(data) != record.sha256:
            raise DataError(f"{self.uri(record.key)}: size or sha256 does not match its record")
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        return LoadedCheckpoint(record, state)

    def load_latest(self) -> LoadedCheckpoint | None:
        """The newest checkpoint whose bytes verify; falls back past torn or corrupted ones."""
        candidates: list[bytes] = []
        with contextlib.suppress(ObjectMissingError):
            candidates.append(self.store.read(LATEST_KEY))
        candidates += [self._read_record(step) for step in self._records()]
        seen: set[str] = set()
        for raw in candidates:
            if not raw:
                continue
            try:
                record = CheckpointRecord.from_json(raw)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping unreadable checkpoint record: %s", exc)
                continue
            if record.key in seen:
                continue
            seen.add(record.key)
            try:
                return self._load(record)
            except (DataError, ObjectMissingError) as exc:
                log.warning("skipping invalid checkpoint %s: %s", record.key, exc)
        return None

    def _read_record(self, step: int) -> bytes:
        try:
            return self.store.read(f"step-{step:08d}.json")
        except ObjectMissingError:
            return b""
