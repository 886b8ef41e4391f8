"""Pure functions of a Dataset: its manifest, fingerprint and data-contract violations.

The fingerprint formula, what a listing counts as data, the manifest format and where the operator
records its manifest are shared with the workloads: `mlops_contract.dataset`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from mlops_contract import dataset as shared

from ..api.v1alpha1.dataset import DataContract
from ..integrations.s3 import ObjectInfo

# The operator's own files live under this folder of the data prefix and are not part of the data.
OPERATOR_FOLDER = shared.OPERATOR_FOLDER
MAX_VIOLATIONS = 5
# Differences between a manifest and the bucket kept word for word (the rest are counted).
MAX_DIFFERENCES = 20


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
    """A whole listing in memory: for small listings and tests (the reconcile streams, `summarize`)."""
    return _manifest(shared.listing_entries(objects, prefix))


def listing_entries(objects: Iterable[ObjectInfo], prefix: str) -> Iterator[shared.ManifestEntry]:
    """The data of a listing, one entry at a time in the listing's (sorted) order."""
    return shared.iter_listing_entries(objects, prefix)


class ManifestFormatError(ValueError):
    pass


def manifest_entries(lines: Iterable[str | bytes]) -> Iterator[shared.ManifestEntry]:
    """A user-supplied manifest's entries as its lines arrive, in the manifest's order; raises
    `ManifestFormatError` at the first line that is not {key, size, sha256 (or checksum)}."""
    try:
        yield from shared.iter_manifest(lines)
    except shared.ManifestError as error:
        raise ManifestFormatError(str(error)) from None


def manifest_from_jsonl(text: str) -> Manifest:
    """A user-supplied manifest: JSON lines with key, size and sha256 (or checksum)."""
    try:
        return _manifest(shared.parse_manifest(text))
    except shared.ManifestError as error:
        raise ManifestFormatError(str(error)) from None


class Entry(Protocol):
    @property
    def key(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def checksum(self) -> str: ...


class TooManyObjectsError(Exception):
    """More objects than the operator reads for one Dataset; listing stopped at `limit` + 1."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"more than {limit} objects")
        self.limit = limit


# Unsorted entries (a store that does not list in key order): the fingerprint needs them sorted.
UnsortedError = shared.UnsortedError


@dataclass(frozen=True)
class DataSummary:
    """What the reconcile needs of a data set, gathered in one pass in bounded memory: counts, the
    fingerprint, the contract's facts, and how a listing differs from an expected manifest."""

    object_count: int
    total_bytes: int
    fingerprint: str
    present_files: frozenset[str] = frozenset()  # of the contract's required files
    odd_keys: tuple[str, ...] = ()  # the first keys without a required suffix, in key order
    odd_count: int = 0
    differences: tuple[str, ...] = ()  # the first ways the listing differs from an expected manifest
    difference_count: int = 0


class _Tally:
    """Counts, the fingerprint and the contract's facts of entries given one at a time in key order."""

    def __init__(self, contract: DataContract | None, limit: int | None) -> None:
        contract = contract or DataContract()
        self.required = set(contract.required_files)
        self.suffixes = tuple(contract.required_suffixes)
        self.limit = limit
        self.hasher = shared.Fingerprinter()
        self.count = self.total = self.odd_count = 0
        self.present: set[str] = set()
        self.odd: list[str] = []
        self.differences: list[str] = []
        self.difference_count = 0

    def add(self, entry: Entry) -> None:
        self.count += 1
        if self.limit is not None and self.count > self.limit:
            raise TooManyObjectsError(self.limit)
        self.hasher.add(entry.key, entry.size, entry.checksum)
        self.total += entry.size
        if entry.key in self.required:
            self.present.add(entry.key)
        if self.suffixes and not entry.key.endswith(self.suffixes):
            self.odd_count += 1
            if len(self.odd) < MAX_VIOLATIONS:
                self.odd.append(entry.key)

    def differ(self, problem: str) -> None:
        self.difference_count += 1
        if len(self.differences) < MAX_DIFFERENCES:
            self.differences.append(problem)

    def summary(self) -> DataSummary:
        return DataSummary(
            self.count,
            self.total,
            self.hasher.value,
            frozenset(self.present),
            tuple(self.odd),
            self.odd_count,
            tuple(self.differences),
            self.difference_count,
        )


def summarize(
    entries: Iterable[Entry],
    contract: DataContract | None = None,
    *,
    limit: int | None = None,
    expected: Iterable[Entry] | None = None,
) -> DataSummary:
    """One pass over `entries` in key order (a listing, page by page): memory does not grow with
    their number. Raises `TooManyObjectsError` past `limit` entries, `UnsortedError` when they come
    out of order (sort them and call again). With `expected` (a manifest, sorted by key), the
    differences are its objects the entries lack or hold at another size."""
    if expected is None:
        tally = _Tally(contract, limit)
        for entry in entries:
            tally.add(entry)
        return tally.summary()
    return compare_with_manifest(entries, expected, contract=None, limit=limit)[1]


def compare_with_manifest(
    listing: Iterable[Entry], manifest: Iterable[Entry], contract: DataContract | None, *, limit: int | None
) -> tuple[DataSummary, DataSummary]:
    """(the manifest's summary, checked for `contract`; the listing's, with the ways it differs from
    the manifest), from one pass over both as they arrive, each in key order: a merge of two sorted
    streams, in memory that grows with neither. Raises `UnsortedError` when either is out of order,
    `TooManyObjectsError` when either passes `limit`, and whatever reading them raises."""
    wanted, listed = _Tally(contract, limit), _Tally(None, limit)
    pending = iter(manifest)
    current = next(pending, None)

    def advance() -> Entry | None:
        assert current is not None
        wanted.add(current)
        return next(pending, None)

    for entry in listing:
        listed.add(entry)
        while current is not None and current.key < entry.key:
            listed.differ(f"{current.key} is in the manifest but not in the bucket")
            current = advance()
        while current is not None and current.key == entry.key:
            if current.size != entry.size:
                listed.differ(f"{entry.key} has {entry.size} bytes, the manifest says {current.size}")
            current = advance()
    while current is not None:
        listed.differ(f"{current.key} is in the manifest but not in the bucket")
        current = advance()
    return wanted.summary(), listed.summary()


def contract_violations(contract: DataContract, data: DataSummary) -> list[str]:
    """Every way the data breaks `contract`, most telling first."""
    violations: list[str] = []
    if contract.min_objects is not None and data.object_count < contract.min_objects:
        violations.append(f"{data.object_count} objects, the contract wants at least {contract.min_objects}")
    if contract.min_bytes is not None and data.total_bytes < contract.min_bytes:
        violations.append(f"{data.total_bytes} bytes, the contract wants at least {contract.min_bytes}")
    if contract.max_bytes is not None and data.total_bytes > contract.max_bytes:
        violations.append(f"{data.total_bytes} bytes, the contract allows at most {contract.max_bytes}")
    violations += [
        f"required file {f} is missing" for f in contract.required_files if f not in data.present_files
    ]
    if contract.required_suffixes:
        suffixes = ", ".join(contract.required_suffixes)
        violations += [f"{k} does not end with one of {suffixes}" for k in data.odd_keys]
        if data.odd_count > len(data.odd_keys):
            violations.append(
                f"... and {data.odd_count - len(data.odd_keys)} more objects with other suffixes"
            )
    if contract.expected_fingerprint and data.fingerprint != contract.expected_fingerprint:
        violations.append(
            f"fingerprint {data.fingerprint} differs from the expected {contract.expected_fingerprint}"
        )
    return violations


class DataChangedError(Exception):
    """The objects listed for the manifest are not the ones fingerprinted: the data changed between."""


def manifest_lines(entries: Iterable[Entry], fingerprint: str) -> Iterator[bytes]:
    """The operator's manifest of a listing (JSON lines, ETags as `checksum`), a line at a time, in
    the listing's order. Raises `DataChangedError` after the last line when those entries do not
    have `fingerprint`, so that a writer aborts instead of recording another listing under it."""
    hasher = shared.Fingerprinter()
    for entry in entries:
        hasher.add(entry.key, entry.size, entry.checksum)
        row = shared.ManifestEntry(entry.key, entry.size, entry.checksum)
        yield shared.encode_manifest_line(row, checksum_field=shared.CHECKSUM_FIELD).encode()
    if hasher.value != fingerprint:
        raise DataChangedError(f"the listing changed from {fingerprint} to {hasher.value}")


def manifest_key(prefix: str, fingerprint: str) -> str:
    """Content-addressed, so writing it again for the same data is a no-op in effect."""
    return shared.operator_manifest_key(prefix, fingerprint)
