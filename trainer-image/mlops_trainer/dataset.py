"""The data-set layout the trainer reads, its data contract, and the check behind `validate-data`.

Layout under a data-set prefix (all keys relative to it):

    schema.json                 format, features/labels dtypes and shapes, class count, split sizes
    manifest.jsonl              one JSON object per line: {"key", "size", "sha256", "records"?}
    <split>/shard-NNNNN.npz     numpy archives with the arrays named in schema.json

The manifest lists exactly the objects of the data set (all but itself). Its format, the fingerprint
formula and what a listing counts as data are the operator's contract (`mlops_contract.dataset`): the
operator computes the same fingerprint for Dataset.status.fingerprint.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
from mlops_contract import dataset as shared

from .errors import DataError
from .storage import ObjectInfo, ObjectMissingError, ObjectStore, sha256_hex

SCHEMA_KEY = "schema.json"
# The operator keeps its own files under this folder of a data prefix; they are not data.
OPERATOR_FOLDER = shared.OPERATOR_FOLDER
MANIFEST_KEY = shared.MANIFEST_FILE
FORMAT_NAME = "npz-shards"
# Violations beyond this are counted, not listed: the report must fit a termination message.
MAX_LISTED_VIOLATIONS = 20


@dataclass(frozen=True)
class ManifestEntry:
    key: str
    size: int
    sha256: str
    records: int | None = None

    def to_json(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"key": self.key, "size": self.size, "sha256": self.sha256}
        if self.records is not None:
            entry["records"] = self.records
        return entry


def fingerprint(entries: Iterable[ManifestEntry]) -> str:
    # Called through the module, so a test can prove this is the contract's formula, not a copy.
    return shared.fingerprint((e.key, e.size, e.sha256) for e in entries)


def listing_fingerprint(objects: Iterable[ObjectInfo]) -> str:
    """The fingerprint the operator reports for a Dataset without `manifestUri`: every object under the
    prefix (but the operator's folder) with its ETag as the checksum."""
    return shared.listing_fingerprint(objects)


def check_fingerprint(store: ObjectStore, expected: str, manifest_fingerprint: str) -> None:
    """Fail when the data changed since the operator validated it (it hands over Dataset.status.fingerprint).

    That value is the manifest fingerprint when the Dataset names this data set's manifest.jsonl as
    `manifestUri`, else the listing fingerprint; either one matching proves the data is unchanged.
    """
    if expected == manifest_fingerprint:
        return
    listed = listing_fingerprint(store.list())
    if expected != listed:
        raise DataError(
            f"{store.uri()}: data changed since the Dataset was validated: expected fingerprint {expected}, "
            f"found {manifest_fingerprint} (manifest) and {listed} (listing)"
        )


def encode_manifest(entries: Iterable[ManifestEntry]) -> bytes:
    rows = (shared.ManifestEntry(e.key, e.size, e.sha256, e.records) for e in entries)
    return shared.encode_manifest(rows, checksum_field=shared.SHA256_FIELD).encode()


def parse_manifest(data: bytes) -> list[ManifestEntry]:
    """The entries of a data set's manifest; each must name its sha256, which loading verifies."""
    try:
        rows = shared.parse_manifest(data, checksum_fields=(shared.SHA256_FIELD,))
    except shared.ManifestError as exc:
        raise DataError(f"{MANIFEST_KEY}: {exc}") from exc
    return [ManifestEntry(row.key, row.size, row.checksum, row.records) for row in rows]


@dataclass(frozen=True)
class Schema:
    """What each shard holds. Features are stored as integers and scaled by 1/max_value on load."""

    feature_name: str
    feature_dtype: str
    feature_shape: tuple[int, ...]
    feature_max_value: float
    label_name: str
    label_dtype: str
    num_classes: int
    split_records: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "version": 1,
            "features": {
                "name": self.feature_name,
                "dtype": self.feature_dtype,
                "shape": list(self.feature_shape),
                "maxValue": self.feature_max_value,
            },
            "labels": {"name": self.label_name, "dtype": self.label_dtype, "numClasses": self.num_classes},
            "splits": {name: {"records": count} for name, count in sorted(self.split_records.items())},
        }

    @classmethod
    def from_json(cls, data: bytes) -> Schema:
        try:
            raw = json.loads(data)
            if raw.get("format") != FORMAT_NAME:
                raise DataError(f"{SCHEMA_KEY}: format is {raw.get('format')!r}, expected {FORMAT_NAME!r}")
            features, labels = raw["features"], raw["labels"]
            return cls(
                feature_name=str(features["name"]),
                feature_dtype=str(features["dtype"]),
                feature_shape=tuple(int(d) for d in features["shape"]),
                feature_max_value=float(features["maxValue"]),
                label_name=str(labels["name"]),
                label_dtype=str(labels["dtype"]),
                num_classes=int(labels["numClasses"]),
                split_records={str(k): int(v["records"]) for k, v in raw["splits"].items()},
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise DataError(f"{SCHEMA_KEY}: malformed ({exc!r})") from exc


@dataclass(frozen=True)
class DataContract:
    """The Dataset's contract (same fields as Dataset.spec.contract, camelCase in JSON)."""

    min_objects: int | None = None
    min_bytes: int | None = None
    max_bytes: int | None = None
    required_files: tuple[str, ...] = (SCHEMA_KEY,)
    required_suffixes: tuple[str, ...] = ()
    expected_fingerprint: str | None = None

    @classmethod
    def from_json(cls, text: str | None) -> DataContract:
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise TypeError("not an object")
        except (ValueError, TypeError) as exc:
            from .errors import ConfigError  # noqa: PLC0415 - avoid a cycle at import time

            raise ConfigError(f"data contract is not a JSON object: {exc}") from exc

        def optional_int(name: str) -> int | None:
            value = raw.get(name)
            return None if value is None else int(value)

        required = tuple(str(k) for k in raw.get("requiredFiles", []))
        return cls(
            min_objects=optional_int("minObjects"),
            min_bytes=optional_int("minBytes"),
            max_bytes=optional_int("maxBytes"),
            required_files=tuple(dict.fromkeys((SCHEMA_KEY, *required))),
            required_suffixes=tuple(str(s) for s in raw.get("requiredSuffixes", [])),
            expected_fingerprint=raw.get("expectedFingerprint"),
        )


@dataclass(frozen=True)
class Violation:
    code: str
    message: str
    key: str | None = None

    def __str__(self) -> str:
        return f"{self.code}: {self.key}: {self.message}" if self.key else f"{self.code}: {self.message}"


@dataclass
class ValidationReport:
    uri: str
    violations: list[Violation] = field(default_factory=list)
    object_count: int = 0
    total_bytes: int = 0
    fingerprint: str | None = None
    split_records: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.violations

    def add(self, code: str, message: str, key: str | None = None) -> None:
        self.violations.append(Violation(code, message, key))

    def to_json(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "valid": self.valid,
            "objectCount": self.object_count,
            "totalBytes": self.total_bytes,
            "fingerprint": self.fingerprint,
            "records": self.split_records,
            "violationCount": len(self.violations),
            "violations": [str(v) for v in self.violations[:MAX_LISTED_VIOLATIONS]],
        }


def encode_shard(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)  # type: ignore[arg-type]
    return buffer.getvalue()


def decode_shard(data: bytes, key: str) -> dict[str, npt.NDArray[Any]]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{key}: not a readable .npz archive ({exc})") from exc


def _check_shard(
    report: ValidationReport, schema: Schema, entry: ManifestEntry, data: bytes
) -> tuple[str, int] | None:
    """Check one shard's arrays against the schema; returns (split, records) when it decodes."""
    try:
        arrays = decode_shard(data, entry.key)
    except DataError as exc:
        report.add("ShardUnreadable", str(exc), entry.key)
        return None
    features, labels = arrays.get(schema.feature_name), arrays.get(schema.label_name)
    if features is None or labels is None:
        report.add(
            "ArrayMissing", f"needs arrays {schema.feature_name!r} and {schema.label_name!r}", entry.key
        )
        return None
    if str(features.dtype) != schema.feature_dtype or tuple(features.shape[1:]) != schema.feature_shape:
        report.add(
            "FeatureShapeMismatch",
            f"{schema.feature_name} is {features.dtype}{list(features.shape[1:])}, schema says "
            f"{schema.feature_dtype}{list(schema.feature_shape)}",
            entry.key,
        )
    if str(labels.dtype) != schema.label_dtype or labels.ndim != 1 or len(labels) != len(features):
        report.add(
            "LabelShapeMismatch",
            f"{schema.label_name} is {labels.dtype}{list(labels.shape)} for {len(features)} records",
            entry.key,
        )
    elif len(labels) and (labels.min() < 0 or labels.max() >= schema.num_classes):
        report.add("LabelOutOfRange", f"labels must lie in [0, {schema.num_classes})", entry.key)
    if len(features) and (features.min() < 0 or features.max() > schema.feature_max_value):
        report.add("FeatureOutOfRange", f"values must lie in [0, {schema.feature_max_value}]", entry.key)
    if entry.records is not None and entry.records != len(features):
        report.add(
            "RecordCountMismatch", f"manifest says {entry.records}, shard holds {len(features)}", entry.key
        )
    return entry.key.split("/", 1)[0], len(features)


def validate_dataset(store: ObjectStore, contract: DataContract | None = None) -> ValidationReport:
    """Check every object of the data set against its manifest, its schema and the contract.

    Reads each object once. Never raises for a violation: all of them are collected in the report.
    """
    contract = contract or DataContract()
    report = ValidationReport(uri=store.uri())
    listed = {info.key: info.size for info in store.list() if not info.key.startswith("_tmp/")}

    for required in (*contract.required_files, MANIFEST_KEY):
        if required not in listed:
            report.add("RequiredFileMissing", "required file is missing", required)
    if MANIFEST_KEY not in listed:
        return report
    try:
        entries = parse_manifest(store.read(MANIFEST_KEY))
    except DataError as exc:
        report.add("ManifestInvalid", str(exc), MANIFEST_KEY)
        return report
    report.object_count = len(entries)
    report.total_bytes = sum(e.size for e in entries)
    report.fingerprint = fingerprint(entries)

    manifest_keys = {e.key for e in entries}
    for key in sorted(set(listed) - manifest_keys - {MANIFEST_KEY}):
        report.add("UnlistedObject", "object under the prefix is not in the manifest", key)
    for entry in entries:
        if contract.required_suffixes and not entry.key.endswith(contract.required_suffixes):
            report.add(
                "SuffixNotAllowed", f"key must end with one of {list(contract.required_suffixes)}", entry.key
            )

    schema: Schema | None = None
    if SCHEMA_KEY in listed:
        try:
            schema = Schema.from_json(store.read(SCHEMA_KEY))
        except DataError as exc:
            report.add("SchemaInvalid", str(exc), SCHEMA_KEY)

    counted: dict[str, int] = {}
    for entry in entries:
        if entry.key not in listed:
            report.add("ObjectMissing", "listed in the manifest but absent", entry.key)
            continue
        if listed[entry.key] != entry.size:
            report.add(
                "SizeMismatch", f"manifest says {entry.size} bytes, object has {listed[entry.key]}", entry.key
            )
            continue
        data = store.read(entry.key)
        actual = sha256_hex(data)
        if actual != entry.sha256:
            report.add("ChecksumMismatch", f"sha256 is {actual}, manifest says {entry.sha256}", entry.key)
            continue
        if schema is not None and entry.key.endswith(".npz"):
            checked = _check_shard(report, schema, entry, data)
            if checked is not None:
                counted[checked[0]] = counted.get(checked[0], 0) + checked[1]
    report.split_records = counted

    if schema is not None:
        for split, expected in sorted(schema.split_records.items()):
            if counted.get(split, 0) != expected:
                report.add(
                    "SplitCountMismatch",
                    f"schema says {expected} records, shards hold {counted.get(split, 0)}",
                    split,
                )
    if contract.min_objects is not None and report.object_count < contract.min_objects:
        report.add(
            "TooFewObjects", f"{report.object_count} objects, contract needs at least {contract.min_objects}"
        )
    if contract.min_bytes is not None and report.total_bytes < contract.min_bytes:
        report.add("TooSmall", f"{report.total_bytes} bytes, contract needs at least {contract.min_bytes}")
    if contract.max_bytes is not None and report.total_bytes > contract.max_bytes:
        report.add("TooLarge", f"{report.total_bytes} bytes, contract allows at most {contract.max_bytes}")
    if contract.expected_fingerprint and report.fingerprint != contract.expected_fingerprint:
        report.add(
            "FingerprintMismatch",
            f"fingerprint is {report.fingerprint}, contract pins {contract.expected_fingerprint}",
        )
    return report


@dataclass(frozen=True)
class SplitData:
    """One split in memory: features scaled to [0, 1] float32 with a channel axis, labels int64."""

    features: npt.NDArray[np.float32]
    labels: npt.NDArray[np.int64]
    schema: Schema
    fingerprint: str

    def __len__(self) -> int:
        return len(self.labels)


def load_split(
    store: ObjectStore,
    split: str,
    select: Callable[[int], npt.NDArray[np.int64]] | None = None,
) -> SplitData:
    """Read one split, verifying each shard's checksum; any inconsistency is a DataError.

    `select`, given the split's record count, returns the sorted indices of the records to keep (a
    sample): when the manifest gives every shard's record count, each shard keeps only its selected
    records as it is read, so memory follows the sample rather than the split.
    """
    try:
        schema = Schema.from_json(store.read(SCHEMA_KEY))
        entries = parse_manifest(store.read(MANIFEST_KEY))
    except ObjectMissingError as exc:
        raise DataError(f"{store.uri()}: not a data set ({exc})") from exc
    shards = [e for e in entries if e.key.startswith(f"{split}/") and e.key.endswith(".npz")]
    if not shards:
        raise DataError(f"{store.uri()}: no shards for split {split!r}")
    counted = all(e.records is not None for e in shards)
    keep = select(sum(e.records or 0 for e in shards)) if select is not None and counted else None
    features: list[npt.NDArray[Any]] = []
    labels: list[npt.NDArray[Any]] = []
    offset = 0
    for entry in shards:
        data = store.read(entry.key)
        if sha256_hex(data) != entry.sha256:
            raise DataError(f"{store.uri(entry.key)}: checksum does not match the manifest")
        arrays = decode_shard(data, entry.key)
        try:
            shard_features, shard_labels = arrays[schema.feature_name], arrays[schema.label_name]
        except KeyError as exc:
            raise DataError(f"{store.uri(entry.key)}: missing array {exc}") from exc
        if keep is not None:
            if len(shard_features) != entry.records or len(shard_labels) != entry.records:
                raise DataError(
                    f"{store.uri(entry.key)}: {len(shard_labels)} records, the manifest says {entry.records}"
                )
            mine = keep[(keep >= offset) & (keep < offset + len(shard_labels))] - offset
            offset += len(shard_labels)
            shard_features, shard_labels = shard_features[mine], shard_labels[mine]
        features.append(shard_features)
        labels.append(shard_labels)
    feature_array = np.concatenate(features).astype(np.float32) / np.float32(schema.feature_max_value)
    label_array = np.concatenate(labels).astype(np.int64)
    if tuple(feature_array.shape[1:]) != schema.feature_shape or len(label_array) != len(feature_array):
        raise DataError(f"{store.uri()}: split {split!r} does not match schema.json")
    if select is not None and keep is None:  # record counts not in the manifest: sample after reading
        chosen = select(len(label_array))
        feature_array, label_array = feature_array[chosen], label_array[chosen]
    if len(schema.feature_shape) == 2:  # images without a channel axis: add one for conv nets
        feature_array = feature_array[:, None, :, :]
    return SplitData(feature_array, label_array, schema, fingerprint(entries))
