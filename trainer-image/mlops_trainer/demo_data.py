"""The demo data set: scikit-learn's bundled 8x8 digits (no download), written as .npz shards.

Used by the tests and by the operator's `mlopsctl dev`. The train/test split is stratified and
seeded, so the same call always writes byte-identical objects and the same fingerprint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .dataset import (
    MANIFEST_KEY,
    SCHEMA_KEY,
    ManifestEntry,
    Schema,
    encode_manifest,
    encode_shard,
    fingerprint,
)
from .storage import ObjectStore, S3ObjectStore, sha256_hex

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

DIGITS_MAX_VALUE = 16.0  # sklearn's digits are 4-bit intensities, 0..16


@dataclass(frozen=True)
class WrittenDataset:
    uri: str
    object_count: int  # objects in the manifest (the manifest itself not counted)
    total_bytes: int
    fingerprint: str
    records: dict[str, int]


def _digits_splits(
    test_fraction: float, seed: int
) -> dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    from sklearn.datasets import load_digits  # noqa: PLC0415 - scikit-learn is slow to import
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    images = digits.images.astype(np.uint8)
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


def write_digits_to_store(
    store: ObjectStore, *, shard_records: int = 256, test_fraction: float = 0.2, seed: int = 0
) -> WrittenDataset:
    """Write shards, then schema.json, then the manifest last, so a reader never sees a partial set."""
    return write_image_dataset(store, _digits_splits(test_fraction, seed), shard_records=shard_records)


def write_image_dataset(
    store: ObjectStore,
    splits: Mapping[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]],
    *,
    max_value: float = DIGITS_MAX_VALUE,
    num_classes: int = 10,
    shard_records: int = 256,
) -> WrittenDataset:
    """Write uint8 images and int64 labels per split in the trainer's format (shards, schema, manifest
    last); e.g. the digits with shifted brightness, a drifted batch for the drift check."""
    entries: list[ManifestEntry] = []
    records: dict[str, int] = {}
    shapes = {tuple(images.shape[1:]) for images, _ in splits.values()}
    if len(shapes) != 1:
        raise ValueError(f"splits hold images of different shapes {sorted(shapes)}")
    for split, (images, labels) in splits.items():
        records[split] = len(labels)
        for index, start in enumerate(range(0, len(labels), shard_records)):
            key = f"{split}/shard-{index:05d}.npz"
            data = encode_shard(
                {
                    "images": images[start : start + shard_records].astype(np.uint8),
                    "labels": labels[start : start + shard_records].astype(np.int64),
                }
            )
            store.write_atomic(key, data)
            entries.append(
                ManifestEntry(key, len(data), sha256_hex(data), len(labels[start : start + shard_records]))
            )
    schema = Schema(
        feature_name="images",
        feature_dtype="uint8",
        feature_shape=shapes.pop(),
        feature_max_value=max_value,
        label_name="labels",
        label_dtype="int64",
        num_classes=num_classes,
        split_records=records,
    )
    schema_bytes = json.dumps(schema.to_json(), indent=2, sort_keys=True).encode()
    store.write_atomic(SCHEMA_KEY, schema_bytes)
    entries.append(ManifestEntry(SCHEMA_KEY, len(schema_bytes), sha256_hex(schema_bytes)))
    store.write_atomic(MANIFEST_KEY, encode_manifest(entries))
    return WrittenDataset(
        uri=store.uri(),
        object_count=len(entries),
        total_bytes=sum(e.size for e in entries),
        fingerprint=fingerprint(entries),
        records=records,
    )


def digits_splits(
    test_fraction: float = 0.2, seed: int = 0
) -> dict[str, tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]]:
    """The demo's train and test splits in memory: uint8 images (n, 8, 8) in 0..16, int64 labels."""
    return _digits_splits(test_fraction, seed)


def write_digits_dataset(
    s3_client: S3Client,
    bucket: str,
    prefix: str,
    *,
    shard_records: int = 256,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> WrittenDataset:
    """Write the digits data set to `s3://bucket/prefix/` with the given boto3 client (bucket must exist)."""
    return write_digits_to_store(
        S3ObjectStore(bucket, prefix, s3_client),
        shard_records=shard_records,
        test_fraction=test_fraction,
        seed=seed,
    )
