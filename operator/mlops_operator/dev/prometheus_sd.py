"""Prometheus file-based service discovery: the targets file the local control plane's Prometheus reads.

The file is a JSON list of target groups, `[{"targets": ["host:port"], "labels": {...}}, ...]`
(https://prometheus.io/docs/prometheus/latest/configuration/configuration/#file_sd_config). Here each
group holds exactly one target, so a target's labels are its own and publishing or removing one leaves
the others untouched. Prometheus re-reads the file when it changes (inotify), so a target appears in
its next scrape cycle.

The pure functions (`with_target`, `without_target`) turn one list of groups into another; `publish`
and `unpublish` apply them to the file under an exclusive lock and replace it atomically, so several
writers (pod runner threads, tests) never lose each other's targets and Prometheus never reads a
half-written file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

# Prometheus label names; names starting with "__" are reserved for its own use (relabelling input).
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_ADDRESS = re.compile(r"^[^\s/:]+:[0-9]{1,5}$")


class TargetGroup(TypedDict):
    targets: list[str]
    labels: dict[str, str]


def _check(address: str, labels: Mapping[str, str]) -> None:
    if not _ADDRESS.match(address):
        raise ValueError(f"a scrape target is host:port, not {address!r}")
    for name in labels:
        if not _LABEL_NAME.match(name) or name.startswith("__"):
            raise ValueError(f"{name!r} is not a label name a target may carry")


def with_target(groups: Sequence[TargetGroup], address: str, labels: Mapping[str, str]) -> list[TargetGroup]:
    """`groups` with `address` (host:port) published under `labels`, replacing any group of that
    address (a restarted pod keeps its address but may change labels). Order is kept; a new target goes
    last."""
    _check(address, labels)
    entry: TargetGroup = {"targets": [address], "labels": dict(labels)}
    result: list[TargetGroup] = []
    replaced = False
    for group in groups:
        if address in group["targets"]:
            if not replaced:
                result.append(entry)
                replaced = True
            continue
        result.append(group)
    if not replaced:
        result.append(entry)
    return result


def without_target(groups: Sequence[TargetGroup], address: str) -> list[TargetGroup]:
    """`groups` less every group that lists `address`."""
    return [group for group in groups if address not in group["targets"]]


def parse(text: str) -> list[TargetGroup]:
    """The groups of a file SD document; an empty file reads as no groups (a file just created)."""
    if not text.strip():
        return []
    document: Any = json.loads(text)
    if not isinstance(document, list):
        raise ValueError("a file SD document is a JSON list of target groups")
    groups: list[TargetGroup] = []
    for item in document:
        targets = [str(t) for t in item.get("targets", [])]
        labels = {str(k): str(v) for k, v in (item.get("labels") or {}).items()}
        groups.append({"targets": targets, "labels": labels})
    return groups


def read_targets(path: Path) -> list[TargetGroup]:
    try:
        return parse(path.read_text())
    except FileNotFoundError:
        return []


def write_targets(path: Path, groups: Sequence[TargetGroup]) -> None:
    """Replace the file atomically (a temporary file in the same directory, then rename): Prometheus
    reacts to the rename and reads either the old or the new list, never a partial one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A dot-name ending in .tmp: not a .json/.yaml file, so a `files:` glob would not pick it up either.
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as out:
            json.dump(list(groups), out, indent=2, sort_keys=True)
            out.write("\n")
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a Prometheus run as another user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock beside the file (not on it: the file itself is replaced by each write)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def publish(path: Path, address: str, labels: Mapping[str, str]) -> None:
    """Add (or relabel) scrape target `address` (host:port) in the file SD file at `path`."""
    with _locked(path):
        write_targets(path, with_target(read_targets(path), address, labels))


def unpublish(path: Path, address: str) -> None:
    """Remove scrape target `address` from the file; absent is fine (idempotent)."""
    with _locked(path):
        groups = read_targets(path)
        remaining = without_target(groups, address)
        if len(remaining) != len(groups):
            write_targets(path, remaining)
