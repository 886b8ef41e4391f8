"""A data set's fingerprint and manifests, as the operator reports them and the workload checks them.

Keys are relative to the data-set prefix (`s3://bucket/prefix/`).

Fingerprint: `sha256:` + the hex sha256 of one line per object, `key<TAB>size<TAB>checksum<LF>`,
sorted by key (then size and checksum, should a manifest name a key twice). The checksum is the
object's sha256 when it comes from the data set's manifest, and its ETag (without quotes) when the
objects were listed. The same data always gives the same value, so `Dataset.status.fingerprint`
pins what a TrainingRun trains on, and the trainer can check it.

Listing: every object under the prefix but folder markers (keys ending in `/`) and the operator's
own folder (`.mlops/`), which holds no data.

Manifest: JSON lines, one object per line, `{"key", "size", "sha256", "records"?}`. A data set's own
manifest is `manifest.jsonl` at its prefix (and lists every object but itself); the operator records
the listing it fingerprinted under `.mlops/manifest-<first 16 hex digits>.jsonl`, with the ETag as
`checksum` (it is not a sha256).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from typing import NamedTuple, Protocol

FINGERPRINT_PREFIX = "sha256:"
# The operator's own files live under this folder of a data prefix; they are not data.
OPERATOR_FOLDER = ".mlops/"
# A data set's own manifest, at its prefix.
MANIFEST_FILE = "manifest.jsonl"
# How a manifest line names the checksum: a verified sha256, or a listing's ETag.
SHA256_FIELD = "sha256"
CHECKSUM_FIELD = "checksum"


class ManifestEntry(NamedTuple):
    key: str  # relative to the data prefix
    size: int
    checksum: str  # sha256 (hex) from a data set's manifest, or an ETag from a listing
    records: int | None = None


class ListedObject(Protocol):
    """One object of an S3 listing, as both sides' clients return it (ETag without quotes)."""

    @property
    def key(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def etag(self) -> str: ...


class ManifestError(ValueError):
    """A manifest that is not JSON lines of {key, size, checksum}."""


def _by_key(entry: ManifestEntry) -> tuple[str, int, str]:
    return entry.key, entry.size, entry.checksum


class UnsortedError(ValueError):
    """Entries given to a `Fingerprinter` out of order."""


class Fingerprinter:
    """The fingerprint computed as a stream, in constant memory, from entries given in sorted order.

    A listing comes sorted: S3's ListObjectsV2 returns keys in UTF-8 binary order, which is the
    order of Python's `str` comparison (code points), and keys under one prefix keep that order
    with the prefix removed. So a listing can be hashed page by page. An entry out of order raises
    `UnsortedError` (the caller sorts and starts again): the value never depends on the order given.
    """

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._last: tuple[str, int, str] | None = None

    def add(self, key: str, size: int, checksum: str) -> None:
        entry = (key, size, checksum)
        if self._last is not None and entry < self._last:
            raise UnsortedError(f"{key!r} comes after {self._last[0]!r}")
        self._last = entry
        self._hash.update(f"{key}\t{size}\t{checksum}\n".encode())

    @property
    def value(self) -> str:
        return FINGERPRINT_PREFIX + self._hash.hexdigest()


def fingerprint(entries: Iterable[tuple[str, int, str]]) -> str:
    """The fingerprint of (key, size, checksum) triples, in any order."""
    hasher = Fingerprinter()
    for key, size, checksum in sorted(entries):
        hasher.add(key, size, checksum)
    return hasher.value


def is_data_key(relative_key: str) -> bool:
    """Whether a listed key (relative to the prefix) is part of the data."""
    return (
        bool(relative_key) and not relative_key.endswith("/") and not relative_key.startswith(OPERATOR_FOLDER)
    )


def iter_listing_entries(objects: Iterable[ListedObject], prefix: str = "") -> Iterator[ManifestEntry]:
    """The data of a listing, one at a time in the listing's order; `prefix` is removed from keys
    that still carry it."""
    for o in objects:
        key = o.key.removeprefix(prefix)
        if is_data_key(key):
            yield ManifestEntry(key, o.size, o.etag)


def listing_entries(objects: Iterable[ListedObject], prefix: str = "") -> list[ManifestEntry]:
    """The data of a listing, sorted by key; `prefix` is removed from keys that still carry it."""
    return sorted(iter_listing_entries(objects, prefix), key=_by_key)


def listing_fingerprint(objects: Iterable[ListedObject], prefix: str = "") -> str:
    """The fingerprint the operator reports for a Dataset without a `manifestURI`."""
    return fingerprint((e.key, e.size, e.checksum) for e in listing_entries(objects, prefix))


def operator_manifest_key(prefix: str, fingerprint_value: str) -> str:
    """Where the operator records a listing: content-addressed, so writing it again is a no-op."""
    return (
        f"{prefix}{OPERATOR_FOLDER}manifest-{fingerprint_value.removeprefix(FINGERPRINT_PREFIX)[:16]}.jsonl"
    )


def encode_manifest_line(entry: ManifestEntry, checksum_field: str = SHA256_FIELD) -> str:
    """One line of a manifest; `records` only where known. A manifest is these lines sorted by key."""
    row: dict[str, object] = {"key": entry.key, "size": entry.size, checksum_field: entry.checksum}
    if entry.records is not None:
        row["records"] = entry.records
    return json.dumps(row, sort_keys=True) + "\n"


def encode_manifest(entries: Iterable[ManifestEntry], checksum_field: str = SHA256_FIELD) -> str:
    """JSON lines sorted by key; `records` only where known."""
    return "".join(encode_manifest_line(e, checksum_field) for e in sorted(entries, key=_by_key))


def iter_manifest(
    lines: Iterable[str | bytes], checksum_fields: tuple[str, ...] = (SHA256_FIELD, CHECKSUM_FIELD)
) -> Iterator[ManifestEntry]:
    """The entries of a manifest's lines, one at a time in the manifest's order (a reader that needs
    them sorted checks or sorts). The checksum is the first of `checksum_fields` a line has. Raises
    ManifestError at the first line that is not UTF-8 JSON of {key, size, checksum}."""
    for number, raw in enumerate(lines, start=1):
        if isinstance(raw, bytes):
            try:
                line = raw.decode()
            except UnicodeDecodeError as error:
                raise ManifestError(f"manifest line {number} is not UTF-8 text: {error}") from None
        else:
            line = raw
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            checksum = next((row[name] for name in checksum_fields if row.get(name)), None)
            if checksum is None:
                raise KeyError(" or ".join(checksum_fields))
            records = row.get("records")
            yield ManifestEntry(
                str(row["key"]), int(row["size"]), str(checksum), None if records is None else int(records)
            )
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            wanted = "{key, size, " + " or ".join(checksum_fields) + "}"
            raise ManifestError(f"manifest line {number} is not {wanted}: {error!r}") from None


def parse_manifest(
    data: str | bytes, checksum_fields: tuple[str, ...] = (SHA256_FIELD, CHECKSUM_FIELD)
) -> list[ManifestEntry]:
    """The entries of a manifest, sorted by key. The checksum is the first of `checksum_fields` a line
    has (a reader that verifies content asks for `sha256` alone). Raises ManifestError."""
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError as error:
            raise ManifestError(f"the manifest is not UTF-8 text: {error}") from None
    return sorted(iter_manifest(data.splitlines(), checksum_fields), key=_by_key)
