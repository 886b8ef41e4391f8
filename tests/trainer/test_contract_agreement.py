"""Operator and trainer agree because they run one contract (`mlops_contract`), not two copies of it.

The operator's side runs in its own environment (.venv, kopf and no torch) as a subprocess, the
trainer's here (.venv-trainer, torch and no kopf): neither side can import the other, both import
the contract.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any
from unittest import mock

import mlops_contract
import pytest
from mlops_contract import dataset as shared
from mlops_contract import exitcodes
from mlops_contract import result as shared_result
from mlops_trainer import errors
from mlops_trainer import result as trainer_result
from mlops_trainer.dataset import (
    MANIFEST_KEY,
    check_fingerprint,
    fingerprint,
    listing_fingerprint,
    parse_manifest,
)
from mlops_trainer.demo_data import write_digits_dataset
from mlops_trainer.storage import S3ObjectStore

from .support import ACCESS_KEY_ID, BUCKET, REGION, SECRET_ACCESS_KEY, S3Server

ROOT = Path(__file__).resolve().parents[2]
OPERATOR_PYTHON = ROOT / ".venv" / "bin" / "python"
CONTRACT_SOURCE = ROOT / "contract" / "src" / "mlops_contract"

# The operator's side: its own S3 client lists the prefix and reads the data set's manifest, its own
# builders fingerprint them. Then the contract's formula is swapped for a marker, to show the
# operator's value is computed by it and not by a copy.
OPERATOR_SIDE = """
import json, sys
from unittest import mock
import mlops_contract
from mlops_contract import dataset as shared
from mlops_operator.builders.dataset import manifest_from_jsonl, manifest_from_listing
from mlops_operator.integrations.s3 import Boto3ObjectStore, S3Config, S3Credentials, S3Location

given = json.loads(sys.argv[1])
store = Boto3ObjectStore(
    S3Config(given["endpoint"], given["region"], S3Credentials(given["keyId"], given["secret"]))
)
location = S3Location.parse(given["uri"])
listed = list(store.list_objects(location))
listing = manifest_from_listing(listed, location.prefix)
manifest = manifest_from_jsonl(
    store.get_bytes(location.bucket, location.prefix + given["manifest"]).decode()
)
with mock.patch.object(shared, "fingerprint", return_value="marker"):
    marked = (listing.fingerprint, manifest.fingerprint)
print(json.dumps({
    "listing": listing.fingerprint,
    "manifest": manifest.fingerprint,
    "marked": marked,
    "keys": [e.key for e in listing.entries],
    "contract": mlops_contract.__file__,
}))
"""


def _operator_side(s3_server: S3Server, uri: str) -> dict[str, Any]:
    if not os.access(OPERATOR_PYTHON, os.X_OK):
        pytest.fail(f"{OPERATOR_PYTHON} is missing: `make install` (part of `make test`) builds it")
    given = {
        "endpoint": s3_server.endpoint_url,
        "region": REGION,
        "keyId": ACCESS_KEY_ID,
        "secret": SECRET_ACCESS_KEY,
        "uri": uri,
        "manifest": MANIFEST_KEY,
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
    done = subprocess.run(
        [str(OPERATOR_PYTHON), "-c", OPERATOR_SIDE, json.dumps(given)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return dict(json.loads(done.stdout))


def test_operator_and_trainer_fingerprint_one_listing_alike_by_the_contract(
    s3_server: S3Server, s3_client: Any
) -> None:
    prefix = "datasets/agreement/v1"
    written = write_digits_dataset(s3_client, BUCKET, prefix)
    # Beside the data: what neither side may count (a folder marker, the operator's own manifest) and
    # keys that test the formula's edges (non-ASCII, spaces, a dot-folder that is not the operator's).
    extra = {
        f"{prefix}/raw/": b"",
        f"{prefix}/.mlops/manifest-0123456789abcdef.jsonl": b'{"key": "x"}\n',
        f"{prefix}/notes/données é.txt": "résumé".encode(),
        f"{prefix}/x.mlops/kept.bin": b"\x00" * 7,
    }
    for key, body in extra.items():
        s3_client.put_object(Bucket=BUCKET, Key=key, Body=body)

    operator = _operator_side(s3_server, f"s3://{BUCKET}/{prefix}/")

    store = S3ObjectStore(BUCKET, prefix, s3_client)
    trainer_listing = listing_fingerprint(store.list())
    trainer_manifest = fingerprint(parse_manifest(store.read(MANIFEST_KEY)))
    with mock.patch.object(shared, "fingerprint", return_value="marker"):
        trainer_marked = (
            listing_fingerprint(store.list()),
            fingerprint(parse_manifest(store.read(MANIFEST_KEY))),
        )

    # Same listing, same value, on both sides, for both kinds of fingerprint.
    assert operator["listing"] == trainer_listing
    assert operator["manifest"] == trainer_manifest == written.fingerprint
    assert operator["listing"] != operator["manifest"]  # ETags are not sha256s: two different values
    # What counted as data: not the folder marker, not the operator's folder.
    assert "raw/" not in operator["keys"]
    assert not any(k.startswith(".mlops/") for k in operator["keys"])
    assert {"notes/données é.txt", "x.mlops/kept.bin", MANIFEST_KEY} <= set(operator["keys"])
    # Both come from the contract: the formula swapped out there is swapped out on both sides ...
    assert operator["marked"] == ["marker", "marker"]
    assert trainer_marked == ("marker", "marker")
    # ... and it is one contract, the repository's, in both environments (not a copy in either).
    assert Path(operator["contract"]).resolve().parent == CONTRACT_SOURCE
    assert Path(mlops_contract.__file__).resolve().parent == CONTRACT_SOURCE
    # The handover works: either value the operator pins is accepted by the trainer's check.
    check_fingerprint(store, operator["listing"], trainer_manifest)
    check_fingerprint(store, operator["manifest"], trainer_manifest)


@pytest.mark.parametrize(
    "error",
    [
        errors.TrainerError,
        errors.ConfigError,
        errors.TensorRTUnavailableError,
        errors.DataError,
        errors.ModelCheckError,
        errors.PreemptedError,
        errors.StorageUnavailableError,
    ],
)
def test_trainer_failures_are_retryable_as_the_contract_says(
    error: type[errors.TrainerError],
) -> None:
    failure = error("boom")
    assert failure.retryable is exitcodes.is_retryable(failure.exit_code)
    written = trainer_result.summary("train", failure.exit_code, reason=failure.reason, message="boom")
    assert written["retryable"] is failure.retryable


def test_the_trainer_writes_the_contracts_summary() -> None:
    assert errors.ExitCode is exitcodes.ExitCode
    assert trainer_result.summary is shared_result.summary
    assert trainer_result.encode_summary is shared_result.encode_summary
    # 143 (a SIGTERM nobody handled) is retryable on this side too, as the operator reads it.
    assert exitcodes.is_retryable(143)
    assert shared_result.summary("compile", exitcodes.ExitCode.TERMINATED)["retryable"] is True
