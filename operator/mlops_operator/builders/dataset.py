"""Pure functions of a Dataset: its manifest, fingerprint and data-contract violations.

The fingerprint formula, what a listing counts as data, the manifest format and where the operator
records its manifest are shared with the workloads: `mlops_contract.dataset`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mlops_contract import dataset as shared

from ..api.v1alpha1.dataset import DataContract
from ..integrations.s3 import ObjectInfo

# The operator's own files live under this folder of the data prefix and are not part of the data.
OPERATOR_FOLDER = shared.OPERATOR_FOLDER
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
        """The contract's fingerprint: the trainer computes the same value from the same data.
        Called through the module, so a test can prove this is the contract's formula, not a copy."""
        return shared.fingerprint((e.key, e.size, e.checksum) for e in self.entries)

    def to_jsonl(self) -> str:
        """The listing as the operator records it: ETags are named `checksum`, not `sha256`."""
        rows = (shared.ManifestEntry(e.key, e.size, e.checksum) for e in self.entries)
        return shared.encode_manifest(rows, checksum_field=shared.CHECKSUM_FIELD)


def _manifest(rows: Iterable[shared.ManifestEntry]) -> Manifest:
    return Manifest(tuple(ManifestEntry(r.key, r.size, r.checksum) for r in rows))


def manifest_from_listing(objects: Iterable[ObjectInfo], prefix: str) -> Manifest:
    return _manifest(shared.listing_entries(objects, prefix))


class ManifestFormatError(ValueError):
    pass


def manifest_from_jsonl(text: str) -> Manifest:
    """A user-supplied manifest: JSON lines with key, size and sha256 (or checksum)."""
    try:
        return _manifest(shared.parse_manifest(text))
    except shared.ManifestError as error:
        raise ManifestFormatError(str(error)) from None


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
    return shared.operator_manifest_key(prefix, fingerprint)
