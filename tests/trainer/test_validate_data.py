"""`validate-data`: the data contract (counts, sizes, required files, checksums) on moto's S3."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from mlops_trainer.dataset import (
    DataContract,
    check_fingerprint,
    fingerprint,
    parse_manifest,
    validate_dataset,
)
from mlops_trainer.demo_data import WrittenDataset, write_digits_dataset
from mlops_trainer.errors import DataError, ExitCode
from mlops_trainer.storage import S3ObjectStore

from .support import BUCKET, S3Server, run_trainer, s3_uri, trainer_env


@pytest.fixture
def fresh_digits(s3_client: Any, request: pytest.FixtureRequest) -> tuple[str, WrittenDataset]:
    """A private copy of the data set, so a test may damage it."""
    prefix = f"datasets/validate/{request.node.name}"
    return prefix, write_digits_dataset(s3_client, BUCKET, prefix)


def test_demo_data_set_satisfies_its_contract(
    s3_client: Any, fresh_digits: tuple[str, WrittenDataset]
) -> None:
    prefix, written = fresh_digits
    report = validate_dataset(S3ObjectStore(BUCKET, prefix, s3_client))
    assert report.valid, report.violations
    assert report.split_records == {"train": 1437, "test": 360}
    assert report.fingerprint == written.fingerprint
    assert report.object_count == written.object_count == 9  # 6 train + 2 test shards + schema.json
    # The fingerprint is the documented one: sha256 over "key\tsize\tsha256\n" lines sorted by key.
    entries = parse_manifest(
        s3_client.get_object(Bucket=BUCKET, Key=f"{prefix}/manifest.jsonl")["Body"].read()
    )
    assert fingerprint(entries) == written.fingerprint


def test_corrupted_object_is_reported_with_its_key(
    s3_client: Any, fresh_digits: tuple[str, WrittenDataset]
) -> None:
    prefix, _ = fresh_digits
    key = f"{prefix}/train/shard-00002.npz"
    data = bytearray(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: only the checksum can tell
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=bytes(data))

    report = validate_dataset(S3ObjectStore(BUCKET, prefix, s3_client))
    assert [(v.code, v.key) for v in report.violations] == [
        ("ChecksumMismatch", "train/shard-00002.npz"),
        ("SplitCountMismatch", "train"),  # the unreadable shard's records are missing from the split
    ]


def test_missing_resized_and_unlisted_objects_and_contract_limits(
    s3_client: Any, fresh_digits: tuple[str, WrittenDataset]
) -> None:
    prefix, written = fresh_digits
    s3_client.delete_object(Bucket=BUCKET, Key=f"{prefix}/test/shard-00001.npz")
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/train/shard-00000.npz", Body=b"short")
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/stray.csv", Body=b"a,b\n")
    contract = DataContract.from_json(
        json.dumps({
            "minObjects": 20, "maxBytes": 1000, "requiredFiles": ["README.md"],
            "requiredSuffixes": [".npz"], "expectedFingerprint": "sha256:" + "0" * 64,
        })
    )  # fmt: skip
    codes = {
        (v.code, v.key)
        for v in validate_dataset(S3ObjectStore(BUCKET, prefix, s3_client), contract).violations
    }
    assert codes == {
        ("RequiredFileMissing", "README.md"),
        ("UnlistedObject", "stray.csv"),
        ("SuffixNotAllowed", "schema.json"),
        ("ObjectMissing", "test/shard-00001.npz"),
        ("SizeMismatch", "train/shard-00000.npz"),
        ("SplitCountMismatch", "train"),
        ("SplitCountMismatch", "test"),
        ("TooFewObjects", None),
        ("TooLarge", None),
        ("FingerprintMismatch", None),
    }
    assert written.object_count < 20


def test_cli_exits_with_the_data_error_code_and_lists_violations(
    s3_server: S3Server, s3_client: Any, fresh_digits: tuple[str, WrittenDataset], tmp_path: Path
) -> None:
    prefix, _ = fresh_digits
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/test/shard-00000.npz", Body=b"x" * 10)
    run = run_trainer(["validate-data", "--dataset-uri", s3_uri(prefix)], trainer_env(s3_server), tmp_path)
    assert run.returncode == ExitCode.DATA
    assert run.summary["status"] == "Failed"
    assert run.summary["retryable"] is False
    assert run.summary["reason"] == "InvalidData"
    assert "SizeMismatch: test/shard-00000.npz" in run.summary["message"]
    assert run.summary["validation"]["violations"][0].startswith("SizeMismatch: test/shard-00000.npz")


def test_cli_passes_a_valid_data_set(s3_server: S3Server, digits: WrittenDataset, tmp_path: Path) -> None:
    run = run_trainer(
        ["validate-data", "--dataset-uri", digits.uri, "--contract", json.dumps({"minObjects": 9})],
        trainer_env(s3_server),
        tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert run.summary["validation"]["valid"] is True
    assert run.summary["validation"]["fingerprint"] == digits.fingerprint


def test_fingerprint_handed_over_by_the_operator_is_checked_both_ways(
    s3_client: Any, fresh_digits: tuple[str, WrittenDataset]
) -> None:
    prefix, written = fresh_digits
    store = S3ObjectStore(BUCKET, prefix, s3_client)
    # With manifestUri naming manifest.jsonl the operator reports the manifest fingerprint ...
    check_fingerprint(store, written.fingerprint, written.fingerprint)
    # ... without it, sha256 over its own listing: every object under the prefix, ETag as checksum.
    listing = s3_client.list_objects_v2(Bucket=BUCKET, Prefix=f"{prefix}/")["Contents"]
    lines = sorted(
        f"{o['Key'].removeprefix(prefix + '/')}\t{o['Size']}\t{o['ETag'].strip(chr(34))}\n" for o in listing
    )
    operator_fingerprint = "sha256:" + hashlib.sha256("".join(lines).encode()).hexdigest()
    check_fingerprint(store, operator_fingerprint, written.fingerprint)
    with pytest.raises(DataError, match="data changed since the Dataset was validated"):
        check_fingerprint(store, "sha256:" + "1" * 64, written.fingerprint)
