"""Pure functions of a Dataset: its manifest, fingerprint and data-contract violations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass

from ..api.v1alpha1.dataset import DataContract
from ..integrations.s3 import ObjectInfo

# The operator's own files live under this folder of the data prefix and are not part of the data.
OPERATOR_FOLDER = ".mlops/"
MAX_VIOLATIONS = 5


@dataclass(frozen=True)
class ManifestEntry:
    key: str  # relative to the data prefix
    size: int
    checksum: str  # ETag from a listing, or sha256 from a user-supplied manifest


@dataclass(frozen=True)
class Manifest:
    entries: tuple[ManifestEntry, ...]

    @property
    def object_count(self) -> int:
        return len(self.entries)

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)

    @property
    def fingerprint(self) -> str:
        """sha256 over "key\tsize\tchecksum\n" lines sorted by key: the same data always gives the
        same fingerprint, and the trainer's `validate-data` computes it the same way."""
        lines = "".join(f"{e.key}\t{e.size}\t{e.checksum}\n" for e in self.entries)
        return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()

    def to_jsonl(self) -> str:
        return "".join(
            json.dumps({"key": e.key, "size": e.size, "checksum": e.checksum}, sort_keys=True) + "\n"
            for e in self.entries
        )


def manifest_from_listing(objects: Iterable[ObjectInfo], prefix: str) -> Manifest:
    entries = [
        ManifestEntry(o.key.removeprefix(prefix), o.size, o.etag)
        for o in objects
        if not o.key.removeprefix(prefix).startswith(OPERATOR_FOLDER) and not o.key.endswith("/")
    ]
    return Manifest(tuple(sorted(entries, key=lambda e: e.key)))


class ManifestFormatError(ValueError):
    pass


def manifest_from_jsonl(text: str) -> Manifest:
    """A user-supplied manifest: JSON lines with key, size and sha256 (or checksum)."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            entries.append(
                ManifestEntry(str(row["key"]), int(row["size"]), str(row.get("sha256") or row["checksum"]))
            )
        except (ValueError, KeyError, TypeError) as error:
            raise ManifestFormatError(
                f"manifest line {number} is not {{key, size, sha256}}: {error}"
            ) from None
    return Manifest(tuple(sorted(entries, key=lambda e: e.key)))


def missing_from_listing(manifest: Manifest, listed: Manifest) -> list[str]:
    """Objects a user-supplied manifest names that the listing lacks or has at another size."""
    sizes = {e.key: e.size for e in listed.entries}
    problems = []
    for entry in manifest.entries:
        if entry.key not in sizes:
            problems.append(f"{entry.key} is in the manifest but not in the bucket")
        elif sizes[entry.key] != entry.size:
            problems.append(f"{entry.key} has {sizes[entry.key]} bytes, the manifest says {entry.size}")
    return problems


def contract_violations(contract: DataContract, manifest: Manifest) -> list[str]:
    """Every way `manifest` breaks `contract`, most telling first."""
    violations: list[str] = []
    if contract.min_objects is not None and manifest.object_count < contract.min_objects:
        violations.append(
            f"{manifest.object_count} objects, the contract wants at least {contract.min_objects}"
        )
    if contract.min_bytes is not None and manifest.total_bytes < contract.min_bytes:
        violations.append(f"{manifest.total_bytes} bytes, the contract wants at least {contract.min_bytes}")
    if contract.max_bytes is not None and manifest.total_bytes > contract.max_bytes:
        violations.append(f"{manifest.total_bytes} bytes, the contract allows at most {contract.max_bytes}")
    keys = {e.key for e in manifest.entries}
    violations += [f"required file {f} is missing" for f in contract.required_files if f not in keys]
    if contract.required_suffixes:
        suffixes = tuple(contract.required_suffixes)
        odd = sorted(k for k in keys if not k.endswith(suffixes))
        violations += [f"{k} does not end with one of {', '.join(suffixes)}" for k in odd[:MAX_VIOLATIONS]]
        if len(odd) > MAX_VIOLATIONS:
            violations.append(f"... and {len(odd) - MAX_VIOLATIONS} more objects with other suffixes")
    if contract.expected_fingerprint and manifest.fingerprint != contract.expected_fingerprint:
        violations.append(
            f"fingerprint {manifest.fingerprint} differs from the expected {contract.expected_fingerprint}"
        )
    return violations


def manifest_key(prefix: str, fingerprint: str) -> str:
    """Content-addressed, so writing it again for the same data is a no-op in effect."""
    return f"{prefix}{OPERATOR_FOLDER}manifest-{fingerprint.removeprefix('sha256:')[:16]}.jsonl"
