"""Dataset controller end to end: real apiserver, moto's S3 server, the operator process."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY, LocalS3
from mlops_operator.integrations import s3 as s3_module
from tests.integration.conftest import OperatorProcess, create_s3_secret
from tests.waiting import wait_for, wait_for_events

G, V, P = "mlops.dev", "v1alpha1", "datasets"


@pytest.fixture
def bucket(s3: LocalS3) -> str:
    name = f"data-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def credentials(core: client.CoreV1Api, namespace: str) -> str:
    create_s3_secret(core, namespace, "s3")
    return "s3"


def _dataset(name: str, s3: LocalS3, uri: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{G}/{V}",
        "kind": "Dataset",
        "metadata": {"name": name},
        "spec": {
            "source": {"uri": uri, "endpointURL": s3.endpoint_url, "credentialsSecretRef": {"name": "s3"}},
            **spec,
        },
    }


def _expected_fingerprint(s3: LocalS3, bucket: str, prefix: str) -> tuple[int, int, str]:
    """Computed here independently from a plain boto3 listing."""
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)["Contents"]
    rows = sorted(
        (o["Key"].removeprefix(prefix), o["Size"], o["ETag"].strip('"'))
        for o in listing
        if "/.mlops/" not in o["Key"]
    )
    lines = "".join(f"{k}\t{s}\t{e}\n" for k, s, e in rows)
    return len(rows), sum(r[1] for r in rows), "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def _get(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    return custom.get_namespaced_custom_object(G, V, namespace, P, name)  # type: ignore[no-any-return]


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in obj.get("status", {}).get("conditions", []) if c["type"] == "Ready"), {})


def _wait_reason(custom: client.CustomObjectsApi, namespace: str, name: str, reason: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = _get(custom, namespace, name)
        return obj if _ready(obj).get("reason") == reason else None

    return wait_for(probe, f"Dataset {name} to have Ready reason {reason}", 60)


def test_dataset_becomes_ready_with_counts_fingerprint_and_manifest(
    operator: OperatorProcess,
    s3: LocalS3,
    bucket: str,
    credentials: str,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
):
    objects = {
        "digits/v1/schema.json": b"{}",
        **{f"digits/v1/part-{i}.npz": b"x" * (100 + i) for i in range(3)},
    }
    for key, data in objects.items():
        s3.client().put_object(Bucket=bucket, Key=key, Body=data)
    spec = {
        "contract": {"minObjects": 4, "requiredFiles": ["schema.json"], "requiredSuffixes": [".npz", ".json"]}
    }
    custom.create_namespaced_custom_object(
        G, V, namespace, P, _dataset("digits", s3, f"s3://{bucket}/digits/v1/", **spec)
    )

    obj = _wait_reason(custom, namespace, "digits", "Validated")
    count, size, fingerprint = _expected_fingerprint(s3, bucket, "digits/v1/")
    status = obj["status"]
    assert (status["phase"], status["objectCount"], status["totalBytes"]) == ("Ready", count, size)
    assert status["fingerprint"] == fingerprint
    assert _ready(obj)["status"] == "True"
    manifest_key = status["manifestURI"].removeprefix(f"s3://{bucket}/")
    manifest = s3.client().get_object(Bucket=bucket, Key=manifest_key)["Body"].read().decode()
    assert sorted(json.loads(line)["key"] for line in manifest.splitlines()) == sorted(
        k.removeprefix("digits/v1/") for k in objects
    )
    # Credentials never leave the Secret: not in status, not in events, not in the operator's log.
    events = wait_for_events(
        core, namespace, "digits", lambda events: any(e.reason == "Validated" for e in events), "Validated"
    )
    for text in (json.dumps(obj), json.dumps([e.message for e in events]), operator.log.read_text()):
        assert DEV_SECRET_ACCESS_KEY not in text
        assert base64.b64encode(DEV_SECRET_ACCESS_KEY.encode()).decode() not in text


def test_contract_violation_is_reported(
    operator: OperatorProcess,
    s3: LocalS3,
    bucket: str,
    credentials: str,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    s3.client().put_object(Bucket=bucket, Key="small/a.csv", Body=b"1,2")
    custom.create_namespaced_custom_object(
        G, V, namespace, P, _dataset("small", s3, f"s3://{bucket}/small/", contract={"minObjects": 10})
    )
    obj = _wait_reason(custom, namespace, "small", "ContractViolated")
    assert obj["status"]["phase"] == "Failed"
    assert "1 objects, the contract wants at least 10" in _ready(obj)["message"]
    assert obj["status"]["violations"] == ["1 objects, the contract wants at least 10"]


def test_missing_bucket_and_missing_secret_are_source_unavailable(
    operator: OperatorProcess,
    s3: LocalS3,
    credentials: str,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
):
    custom.create_namespaced_custom_object(
        G, V, namespace, P, _dataset("nobucket", s3, "s3://no-such-bucket-here/x/")
    )
    obj = _wait_reason(custom, namespace, "nobucket", "SourceUnavailable")
    assert "BucketNotFound" in _ready(obj)["message"]
    assert obj["status"]["phase"] == "Pending"

    doc = _dataset("nosecret", s3, "s3://whatever/x/")
    doc["spec"]["source"]["credentialsSecretRef"]["name"] = "missing"
    custom.create_namespaced_custom_object(G, V, namespace, P, doc)
    obj = _wait_reason(custom, namespace, "nosecret", "SourceUnavailable")
    assert "Secret missing not found" in _ready(obj)["message"]
    warnings = wait_for(
        lambda: [e for e in core.list_namespaced_event(namespace).items if e.reason == "SourceUnavailable"],
        "a SourceUnavailable event",
        30,
    )
    assert {e.involved_object.name for e in warnings} >= {"nobucket"}


def test_data_change_updates_the_fingerprint_on_refresh(
    operator: OperatorProcess,
    s3: LocalS3,
    bucket: str,
    credentials: str,
    custom: client.CustomObjectsApi,
    core: client.CoreV1Api,
    namespace: str,
):
    s3.client().put_object(Bucket=bucket, Key="live/a.bin", Body=b"a")
    custom.create_namespaced_custom_object(
        G, V, namespace, P, _dataset("live", s3, f"s3://{bucket}/live/", refreshInterval="2s")
    )
    first = _wait_reason(custom, namespace, "live", "Validated")["status"]["fingerprint"]
    s3.client().put_object(Bucket=bucket, Key="live/b.bin", Body=b"bb")

    def changed() -> dict[str, Any] | None:
        obj = _get(custom, namespace, "live")
        return obj if obj["status"].get("fingerprint") != first else None

    obj = wait_for(changed, "the fingerprint to change", 60)
    assert obj["status"]["objectCount"] == 2
    assert obj["status"]["fingerprint"] == _expected_fingerprint(s3, bucket, "live/")[2]
    events = wait_for(
        lambda: [e for e in core.list_namespaced_event(namespace).items if e.reason == "FingerprintChanged"],
        "a FingerprintChanged event",
        30,
    )
    assert first in events[0].message


def test_a_large_manifest_is_streamed_in_parts_and_a_failed_stream_leaves_nothing(
    s3: LocalS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's store writes what it is given part by part (S3's multipart upload, on moto's
    real S3 server): about one part in memory, however large the manifest."""
    monkeypatch.setattr(s3_module, "PART_BYTES", 5 * 1024 * 1024)  # S3's smallest part
    store = s3_module.Boto3ObjectStore(
        s3_module.S3Config(
            s3.endpoint_url,
            DEV_REGION,
            s3_module.S3Credentials(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY),
        )
    )
    chunk = b"x" * (1024 * 1024 - 1) + b"\n"
    store.put_stream(bucket, "big.jsonl", (chunk for _ in range(11)), "application/jsonl")
    body = s3.client().get_object(Bucket=bucket, Key="big.jsonl")["Body"].read()
    assert body == chunk * 11
    head = s3.client().head_object(Bucket=bucket, Key="big.jsonl")
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB

    def breaks() -> Any:
        for _ in range(7):
            yield chunk
        raise RuntimeError("the data changed")

    with pytest.raises(RuntimeError, match="the data changed"):
        store.put_stream(bucket, "broken.jsonl", breaks(), "application/jsonl")
    assert "Contents" not in s3.client().list_objects_v2(Bucket=bucket, Prefix="broken")
    assert not s3.client().list_multipart_uploads(Bucket=bucket).get("Uploads")

    store.put_stream(bucket, "small.jsonl", iter([b"a\n", b"b\n"]), "application/jsonl")
    assert s3.client().get_object(Bucket=bucket, Key="small.jsonl")["Body"].read() == b"a\nb\n"


def test_a_manifest_is_read_line_by_line_within_its_size_limit(
    s3: LocalS3, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's store reads a manifest from moto's real S3 server in chunks, lines split
    across chunk boundaries put back together, refused past its limit (before or while reading)."""
    monkeypatch.setattr(s3_module, "LINE_CHUNK_BYTES", 7)  # every line spans chunks
    store = s3_module.Boto3ObjectStore(
        s3_module.S3Config(
            s3.endpoint_url, DEV_REGION, s3_module.S3Credentials(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)
        )
    )
    lines = [json.dumps({"key": f"part-{n}.npz", "size": n, "sha256": "ab" * 32}).encode() for n in range(50)]
    s3.client().put_object(Bucket=bucket, Key="m.jsonl", Body=b"\n".join(lines) + b"\n")
    assert list(store.iter_lines(bucket, "m.jsonl", max_bytes=10**6)) == lines
    s3.client().put_object(Bucket=bucket, Key="no-newline.jsonl", Body=b"a\nb")
    assert list(store.iter_lines(bucket, "no-newline.jsonl", max_bytes=100)) == [b"a", b"b"]
    with pytest.raises(s3_module.ObjectTooLargeError):
        next(store.iter_lines(bucket, "m.jsonl", max_bytes=100))
    with pytest.raises(s3_module.S3UnavailableError, match="NoSuchKey"):
        next(store.iter_lines(bucket, "absent.jsonl", max_bytes=100))
