"""Dataset manifest, fingerprint, contract and reconcile, as data (an in-memory object store).

The S3 side is an in-memory `ObjectStore` here so each rule is checked in isolation; the same
reconcile runs against moto's real S3 server in tests/integration/test_dataset.py.
"""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from mlops_contract import dataset as shared

from mlops_operator.api.v1alpha1 import DatasetSpec
from mlops_operator.api.v1alpha1.dataset import DataContract
from mlops_operator.builders.dataset import (
    Manifest,
    ManifestEntry,
    contract_violations,
    manifest_from_jsonl,
    manifest_from_listing,
    summarize,
)
from mlops_operator.handlers import dataset
from mlops_operator.handlers.base import Outcome, Unchanged
from mlops_operator.handlers.context import Clients, ReconcileContext
from mlops_operator.integrations.endpoints import endpoint_allowed
from mlops_operator.integrations.s3 import (
    Boto3ObjectStore,
    ObjectInfo,
    ObjectTooLargeError,
    S3Config,
    S3Credentials,
    S3Location,
    S3UnavailableError,
    split_object_uri,
)
from mlops_operator.settings import OperatorConfig
from mlops_operator.timeutil import to_rfc3339

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


class InMemoryStore:
    def __init__(self, objects: dict[str, bytes], *, broken: str | None = None) -> None:
        self.objects = objects
        self.broken = broken

    def list_objects(self, location: S3Location) -> Iterator[ObjectInfo]:
        if self.broken:
            raise S3UnavailableError(self.broken, f"cannot list {location.uri(location.prefix)}")
        for key, data in sorted(self.objects.items()):
            if key.startswith(f"{location.bucket}/{location.prefix}"):
                yield ObjectInfo(key.removeprefix(f"{location.bucket}/"), len(data), f"etag-{len(data)}")

    def get_bytes(self, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
        data = self.objects[f"{bucket}/{key}"]
        if max_bytes is not None and len(data) > max_bytes:
            raise ObjectTooLargeError(f"s3://{bucket}/{key}", len(data), max_bytes)
        return data

    def iter_lines(self, bucket: str, key: str, *, max_bytes: int) -> Iterator[bytes]:
        yield from self.get_bytes(bucket, key, max_bytes=max_bytes).split(b"\n")

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        self.objects[f"{bucket}/{key}"] = data

    def put_stream(self, bucket: str, key: str, chunks: Iterable[bytes], content_type: str) -> None:
        self.objects[f"{bucket}/{key}"] = b"".join(chunks)  # an exception from `chunks` writes nothing

    def exists(self, bucket: str, key: str) -> bool:
        return f"{bucket}/{key}" in self.objects


CREDENTIALS = S3Credentials("AKIAIOSFODNN7EXAMPLE", "tenant-secret")
SEEN_CONFIGS: list[S3Config] = []


@pytest.fixture(autouse=True)
def _tenant_secret(monkeypatch):
    """The Dataset's Secret, as the handler would read it from the apiserver."""
    monkeypatch.setattr(dataset, "read_credentials", lambda _ctx, _ref: CREDENTIALS)
    SEEN_CONFIGS.clear()


def _ctx(
    store: InMemoryStore,
    status: dict | None = None,
    generation: int = 1,
    config: OperatorConfig | None = None,
) -> ReconcileContext:
    body = {"metadata": {"name": "d", "namespace": "ns", "generation": generation}, "status": status or {}}

    def object_store(s3_config: S3Config) -> InMemoryStore:
        SEEN_CONFIGS.append(s3_config)
        return store

    return ReconcileContext(
        body, Clients(api=None, object_store=object_store), config or OperatorConfig(), now=lambda: NOW
    )


SPEC = DatasetSpec.model_validate(
    {
        "source": {"uri": "s3://data/digits/", "credentialsSecretRef": {"name": "s3"}},
        "contract": {"minObjects": 2, "requiredFiles": ["schema.json"]},
    }
)
DATA = {"data/digits/schema.json": b"{}", "data/digits/part-0.npz": b"x" * 100, "data/other/x": b"no"}


def test_fingerprint_is_order_independent_and_content_sensitive():
    a = manifest_from_listing([ObjectInfo("p/a", 1, "e1"), ObjectInfo("p/b", 2, "e2")], "p/")
    b = manifest_from_listing([ObjectInfo("p/b", 2, "e2"), ObjectInfo("p/a", 1, "e1")], "p/")
    c = manifest_from_listing([ObjectInfo("p/a", 1, "e1"), ObjectInfo("p/b", 2, "CHANGED")], "p/")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint
    # The documented formula, shared with the trainer's validate-data.
    assert a.fingerprint == "sha256:" + hashlib.sha256(b"a\t1\te1\nb\t2\te2\n").hexdigest()
    assert (a.object_count, a.total_bytes) == (2, 3)


def test_operator_files_and_folder_markers_are_not_data():
    listed = [
        ObjectInfo("p/a", 1, "e"),
        ObjectInfo("p/.mlops/manifest-1.jsonl", 9, "m"),
        ObjectInfo("p/dir/", 0, ""),
    ]
    assert [e.key for e in manifest_from_listing(listed, "p/").entries] == ["a"]


def test_contract_violations_are_precise():
    manifest = Manifest((ManifestEntry("a.npz", 10, "x"), ManifestEntry("b.txt", 10, "y")))
    contract = DataContract.model_validate(
        {
            "minObjects": 3,
            "minBytes": 100,
            "requiredFiles": ["schema.json"],
            "requiredSuffixes": [".npz"],
            "expectedFingerprint": "sha256:" + "0" * 64,
        }
    )
    violations = contract_violations(contract, summarize(manifest.entries, contract))
    assert violations[0] == "2 objects, the contract wants at least 3"
    assert "20 bytes, the contract wants at least 100" in violations
    assert "required file schema.json is missing" in violations
    assert "b.txt does not end with one of .npz" in violations
    assert any(v.startswith("fingerprint sha256:") for v in violations)
    assert contract_violations(DataContract(), summarize(manifest.entries)) == []


def test_user_manifest_is_checked_against_the_bucket():
    manifest = manifest_from_jsonl(
        '{"key": "a", "size": 1, "sha256": "s"}\n{"key": "b", "size": 5, "sha256": "t"}\n'
    )
    listed = summarize([ManifestEntry("a", 2, "e")], expected=manifest.entries)
    assert list(listed.differences) == [
        "a has 2 bytes, the manifest says 1",
        "b is in the manifest but not in the bucket",
    ]


def test_ready_dataset_reports_counts_and_writes_its_manifest():
    store = InMemoryStore(dict(DATA))
    outcome = dataset.reconcile(SPEC, _ctx(store))
    assert outcome.phase == "Ready"
    assert outcome.conditions[0].reason == "Validated"
    assert outcome.fields["objectCount"] == 2
    assert outcome.fields["totalBytes"] == 102
    uri = str(outcome.fields["manifestURI"])
    assert uri.startswith("s3://data/digits/.mlops/manifest-")
    written = store.objects[uri.removeprefix("s3://")].decode()
    assert written == manifest_from_jsonl(written).to_jsonl()
    # A second reconcile over the same data lists the manifest object but does not count it.
    again = dataset.reconcile(SPEC, _ctx(store, {"fingerprint": outcome.fields["fingerprint"]}))
    assert again.fields["fingerprint"] == outcome.fields["fingerprint"]
    assert again.events == ()


def test_changed_data_changes_the_fingerprint_with_an_event():
    store = InMemoryStore(dict(DATA))
    first = dataset.reconcile(SPEC, _ctx(store))
    store.objects["data/digits/part-1.npz"] = b"y" * 7
    second = dataset.reconcile(SPEC, _ctx(store, {"fingerprint": first.fields["fingerprint"]}))
    assert second.fields["fingerprint"] != first.fields["fingerprint"]
    assert [e.reason for e in second.events] == ["FingerprintChanged"]


def test_contract_violation():
    store = InMemoryStore({"data/digits/part-0.npz": b"x"})
    outcome = dataset.reconcile(SPEC, _ctx(store))
    assert outcome.phase == "Failed"
    (ready,) = outcome.conditions
    assert (ready.status, ready.reason) == ("False", "ContractViolated")
    assert "1 objects, the contract wants at least 2" in ready.message
    assert "required file schema.json is missing" in ready.message


def test_unavailable_source_is_a_condition_not_a_crash():
    outcome = dataset.reconcile(SPEC, _ctx(InMemoryStore({}, broken="BucketNotFound")))
    assert outcome.phase == "Pending"
    (ready,) = outcome.conditions
    assert (ready.status, ready.reason) == ("False", "SourceUnavailable")
    assert "BucketNotFound" in ready.message


@pytest.mark.parametrize(
    ("status", "refresh", "due"),
    [
        ({}, None, True),  # never checked
        ({"observedGeneration": 1, "lastCheckedTime": to_rfc3339(NOW)}, None, False),
        ({"observedGeneration": 0, "lastCheckedTime": to_rfc3339(NOW)}, None, True),  # new generation
        ({"observedGeneration": 1, "lastCheckedTime": to_rfc3339(NOW - timedelta(minutes=9))}, "10m", False),
        ({"observedGeneration": 1, "lastCheckedTime": to_rfc3339(NOW - timedelta(minutes=10))}, "10m", True),
    ],
)
def test_refresh_is_due_on_schedule(status, refresh, due):
    spec = SPEC.model_copy(update={"refresh_interval": refresh})
    assert (dataset.due_in(spec, _ctx(InMemoryStore({}), status)) == 0) is due


def test_unavailable_source_is_retried_with_growing_backoff():
    def status(failing_for: timedelta, since_check: timedelta) -> dict:
        return {
            "observedGeneration": 1,
            "lastCheckedTime": to_rfc3339(NOW - since_check),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "SourceUnavailable",
                    "lastTransitionTime": to_rfc3339(NOW - failing_for),
                }
            ],
        }

    store = InMemoryStore({})

    def due_in(failing_for: timedelta, since_check: timedelta) -> float | None:
        return dataset.due_in(SPEC, _ctx(store, status(failing_for, since_check)))

    assert due_in(timedelta(seconds=20), timedelta(seconds=15)) == 0
    assert due_in(timedelta(minutes=4), timedelta(seconds=60)) == 60  # half of 4 min, 1 min spent
    assert due_in(timedelta(minutes=4), timedelta(minutes=2)) == 0
    assert due_in(timedelta(hours=5), timedelta(minutes=4)) == 60  # capped at 5 min
    assert due_in(timedelta(hours=5), timedelta(minutes=5)) == 0


def test_a_settled_dataset_is_not_listed_again_until_its_refresh_is_due():
    class CountingStore(InMemoryStore):
        lists = 0

        def list_objects(self, location: S3Location) -> Iterator[ObjectInfo]:
            CountingStore.lists += 1
            return super().list_objects(location)

    store = CountingStore(dict(DATA))
    spec = SPEC.model_copy(update={"refresh_interval": "10m"})
    first = dataset.reconcile(spec, _ctx(store))
    assert isinstance(first, Outcome)
    assert first.requeue_after == 600
    # Listed twice: to fingerprint, and again to stream the new manifest to S3.
    assert CountingStore.lists == 2
    status = {**first.fields, "observedGeneration": 1, "phase": first.phase}
    # A restart (or our own status write) delivers the object again: nothing is listed.
    again = dataset.reconcile(spec, _ctx(store, status))
    assert isinstance(again, Unchanged)
    assert again.requeue_after == 600
    assert CountingStore.lists == 2


def test_a_manifest_that_is_not_utf8_is_a_contract_violation():
    store = InMemoryStore({**DATA, "data/digits/manifest.jsonl": b"\xff\xfe not text"})
    spec = SPEC.model_copy(
        update={"source": SPEC.source.model_copy(update={"manifest_uri": "s3://data/digits/manifest.jsonl"})}
    )
    outcome = dataset.reconcile(spec, _ctx(store))
    assert isinstance(outcome, Outcome)
    assert outcome.phase == "Failed"
    (ready,) = outcome.conditions
    assert ready.reason == "ContractViolated"
    assert "not UTF-8" in ready.message


def test_s3_location_parsing():
    assert S3Location.parse("s3://bucket/a/b") == S3Location("bucket", "a/b/")
    assert S3Location.parse("s3://bucket") == S3Location("bucket", "")
    with pytest.raises(ValueError, match="not an s3"):
        S3Location.parse("gs://bucket/x")
    assert split_object_uri("s3://bucket/a/manifest.jsonl") == ("bucket", "a/manifest.jsonl")
    assert "secret" not in repr(S3Config(credentials=None))


# -- tenant safety ------------------------------------------------------------------------------------


def test_the_store_gets_the_tenants_credentials():
    dataset.reconcile(SPEC, _ctx(InMemoryStore(dict(DATA))))
    assert [c.credentials for c in SEEN_CONFIGS] == [CREDENTIALS]


def test_a_dataset_without_credentials_is_refused_by_the_api():
    with pytest.raises(ValueError, match="credentialsSecretRef is required"):
        DatasetSpec.model_validate({"source": {"uri": "s3://data/digits/"}})


def test_a_stored_dataset_without_credentials_is_never_read_with_the_operators_identity():
    # An object stored before the schema required the Secret: the handler refuses it too.
    spec = SPEC.model_copy(update={"source": SPEC.source.model_copy(update={"credentials_secret_ref": None})})
    outcome = dataset.reconcile(spec, _ctx(InMemoryStore(dict(DATA))))
    assert isinstance(outcome, Outcome)
    assert (outcome.phase, outcome.conditions[0].reason) == ("Failed", "CredentialsRequired")
    assert SEEN_CONFIGS == []  # no client was even built


def test_the_boto3_store_refuses_to_run_without_explicit_credentials():
    with pytest.raises(S3UnavailableError, match="never uses its own identity"):
        Boto3ObjectStore(S3Config("http://127.0.0.1:1", None, None))
    with pytest.raises(S3UnavailableError):
        Boto3ObjectStore(S3Config(None, None, S3Credentials("", "")))


@pytest.mark.parametrize(
    ("endpoint", "allowlist", "allowed"),
    [
        (None, [], True),
        ("https://s3.amazonaws.com", [], True),
        ("https://s3.eu-west-1.amazonaws.com", [], True),
        ("https://s3-us-west-2.amazonaws.com", [], True),
        ("https://s3.dualstack.us-east-1.amazonaws.com", [], True),
        ("https://bucket.s3.us-east-1.amazonaws.com", [], True),
        ("https://bucket.vpce-0a1b.s3.us-east-1.vpce.amazonaws.com", [], True),
        ("https://s3.cn-north-1.amazonaws.com.cn", [], True),
        ("https://s3.amazonaws.com.evil.example", [], False),
        ("http://169.254.169.254/latest/meta-data/", [], False),
        ("http://127.0.0.1:5000", [], False),
        ("http://kubernetes.default.svc:443", [], False),
        ("http://127.0.0.1:5000", ["127.0.0.1"], True),
        ("http://127.0.0.1:5000", ["127.0.0.1:5000"], True),
        ("http://127.0.0.1:5001", ["127.0.0.1:5000"], False),
        ("http://localhost:9000", ["LOCALHOST"], True),
        ("http://[::1]:9000", ["[::1]"], True),
        ("http://[::1]:9000", ["[::1]:9001"], False),
        ("https://minio.data.example.com", ["*.data.example.com"], True),
        ("https://minio.data.example.com:443", ["*.data.example.com:443"], True),
        ("https://data.example.com", ["*.data.example.com"], False),
        ("https://evildata.example.com", ["*.data.example.com"], False),
        ("https://minio.example.com", ["minio.example.com:9000"], False),
    ],
)
def test_endpoint_allowlist(endpoint, allowlist, allowed):
    assert endpoint_allowed(endpoint, allowlist) is allowed


def test_an_endpoint_off_the_allowlist_is_refused_before_any_request():
    spec = SPEC.model_copy(
        update={"source": SPEC.source.model_copy(update={"endpoint_url": "http://169.254.169.254"})}
    )
    outcome = dataset.reconcile(spec, _ctx(InMemoryStore(dict(DATA))))
    assert isinstance(outcome, Outcome)
    (ready,) = outcome.conditions
    assert (outcome.phase, ready.reason) == ("Failed", "EndpointNotAllowed")
    assert "169.254.169.254:80 is not on the operator's allow-list" in ready.message
    assert "MLOPS_S3_ENDPOINT_ALLOWLIST" in ready.message
    assert SEEN_CONFIGS == []
    assert outcome.requeue_after is not None  # looked at again: the allow-list may change
    allowed = OperatorConfig(s3_endpoint_allowlist=["169.254.169.254"])
    assert dataset.reconcile(spec, _ctx(InMemoryStore(dict(DATA)), config=allowed)).phase == "Ready"


def test_a_manifest_over_the_size_cap_is_refused_unread():
    manifest = b"".join(b'{"key": "part-0.npz", "size": 100, "sha256": "x"}\n' for _ in range(100))
    store = InMemoryStore({**DATA, "data/digits/manifest.jsonl": manifest})
    spec = SPEC.model_copy(
        update={"source": SPEC.source.model_copy(update={"manifest_uri": "s3://data/digits/manifest.jsonl"})}
    )
    outcome = dataset.reconcile(spec, _ctx(store, config=OperatorConfig(manifest_max_bytes=1024)))
    assert isinstance(outcome, Outcome)
    (ready,) = outcome.conditions
    assert (outcome.phase, ready.reason) == ("Failed", "ManifestTooLarge")
    assert f"is {len(manifest)} bytes, over the operator's limit of 1024 bytes" in ready.message
    roomy = OperatorConfig(manifest_max_bytes=len(manifest))
    assert dataset.reconcile(spec, _ctx(store, config=roomy)).conditions[0].reason != "ManifestTooLarge"


# -- one tenant's huge prefix: streamed, capped ----------------------------------------------------


def test_the_streamed_fingerprint_is_the_contracts_formula():
    entries = [("a", 1, "e1"), ("a/b", 2, "e2"), ("b", 3, "e3"), ("é", 4, "e4")]
    hasher = shared.Fingerprinter()
    for entry in entries:
        hasher.add(*entry)
    assert hasher.value == shared.fingerprint(reversed(entries))
    assert summarize(ManifestEntry(*e) for e in entries).fingerprint == shared.fingerprint(entries)
    with pytest.raises(shared.UnsortedError):
        summarize(ManifestEntry(*e) for e in reversed(entries))


def test_s3_key_order_is_the_order_the_fingerprint_sorts_by():
    # ListObjectsV2 returns keys in UTF-8 byte order; the fingerprint sorts `str`s by code point.
    # The two agree, also past the BMP, so a listing can be hashed page by page as it arrives.
    keys = ["a", "a b", "a/b", "a0", "z", "~", "\u00e9", "\u20ac", "\uffff", "\U0001f600", "\U0010fffd"]
    assert sorted(keys) == sorted(keys, key=lambda k: k.encode())


class EndlessStore(InMemoryStore):
    """A prefix with more objects than anyone would list: listing past `stop` fails the test."""

    def __init__(self, stop: int) -> None:
        super().__init__({})
        self.stop = stop
        self.listed = 0

    def list_objects(self, location: S3Location) -> Iterator[ObjectInfo]:
        for n in range(10**12):
            self.listed += 1
            assert n < self.stop, "listed past the operator's limit"
            yield ObjectInfo(f"{location.prefix}part-{n:012d}.npz", 1, f"etag-{n}")


def test_a_prefix_over_the_object_limit_is_refused_without_listing_all_of_it():
    store = EndlessStore(stop=1_000)
    config = OperatorConfig(dataset_max_objects=100)
    outcome = dataset.reconcile(SPEC, _ctx(store, config=config))
    assert isinstance(outcome, Outcome)
    (ready,) = outcome.conditions
    assert (outcome.phase, ready.status, ready.reason) == ("Failed", "False", "TooManyObjects")
    assert "more than 100 objects" in ready.message
    assert "MLOPS_DATASET_MAX_OBJECTS" in ready.message
    assert store.listed == 101
    assert outcome.requeue_after is None
    assert outcome.fields["objectLimit"] == 100
    # Not listed again (not even on refresh) until the spec or the limit changes.
    status = {
        **outcome.fields,
        "observedGeneration": 1,
        "conditions": [{"type": "Ready", "status": "False", "reason": "TooManyObjects"}],
    }
    refreshing = SPEC.model_copy(update={"refresh_interval": "1m"})
    later = _ctx(store, status, config=config)
    later.now = lambda: NOW + timedelta(hours=1)
    assert dataset.due_in(refreshing, later) is None
    assert dataset.due_in(refreshing, _ctx(store, status, generation=2, config=config)) == 0
    assert (
        dataset.due_in(refreshing, _ctx(store, status, config=OperatorConfig(dataset_max_objects=10**6))) == 0
    )


def test_a_prefix_within_the_limit_passes_and_clears_the_limit():
    store = InMemoryStore(dict(DATA))
    status = {"objectLimit": 1}
    outcome = dataset.reconcile(SPEC, _ctx(store, status, config=OperatorConfig(dataset_max_objects=2)))
    assert outcome.phase == "Ready"
    assert outcome.fields["objectLimit"] is None  # removed from status


def test_a_store_that_lists_out_of_key_order_gets_the_same_fingerprint():
    class ReversedStore(InMemoryStore):
        def list_objects(self, location: S3Location) -> Iterator[ObjectInfo]:
            return reversed(list(super().list_objects(location)))

    data = {**DATA, "data/digits/part-1.npz": b"y" * 3}
    ordered = dataset.reconcile(SPEC, _ctx(InMemoryStore(dict(data))))
    unordered_store = ReversedStore(dict(data))
    unordered = dataset.reconcile(SPEC, _ctx(unordered_store))
    assert unordered.phase == ordered.phase == "Ready"
    assert unordered.fields["fingerprint"] == ordered.fields["fingerprint"]
    written = unordered_store.objects[str(unordered.fields["manifestURI"]).removeprefix("s3://")]
    assert written == manifest_from_jsonl(written.decode()).to_jsonl().encode()  # sorted by key


def test_the_manifest_is_not_recorded_under_a_fingerprint_its_lines_do_not_have():
    class ChangingStore(InMemoryStore):
        """The data changes between the fingerprint's listing and the manifest's."""

        lists = 0

        def list_objects(self, location: S3Location) -> Iterator[ObjectInfo]:
            self.lists += 1
            if self.lists == 2:
                self.objects["data/digits/late.npz"] = b"z"
            return super().list_objects(location)

    store = ChangingStore(dict(DATA))
    outcome = dataset.reconcile(SPEC, _ctx(store))
    assert outcome.phase == "Ready"
    assert outcome.fields["manifestURI"] is None  # not the manifest of earlier data either
    assert "the data changed while its manifest was written" in outcome.conditions[0].message
    assert not any(".mlops/" in key for key in store.objects)
    # Listed and written again soon, though the Dataset has no refresh interval.
    assert outcome.requeue_after == 15
    status = {
        **{k: v for k, v in outcome.fields.items() if v is not None},
        "observedGeneration": 1,
        "phase": "Ready",
        "conditions": [{"type": "Ready", "status": "True", "reason": "Validated"}],
    }
    assert dataset.due_in(SPEC, _ctx(store, status)) == 15
    later = _ctx(store, status)
    later.now = lambda: NOW + timedelta(seconds=15)
    assert dataset.due_in(SPEC, later) == 0
    again = dataset.reconcile(SPEC, later)
    assert isinstance(again, Outcome)
    assert str(again.fields["manifestURI"]).startswith("s3://data/digits/.mlops/manifest-")
    # Written, the Dataset is not looked at again (no refresh interval).
    settled = {**status, **{k: v for k, v in again.fields.items() if v is not None}}
    assert dataset.due_in(SPEC, _ctx(store, settled)) is None


def test_a_long_list_of_manifest_differences_is_counted_not_kept():
    lines = "".join(f'{{"key": "missing-{n:04d}", "size": 1, "sha256": "s"}}\n' for n in range(500))
    store = InMemoryStore({**DATA, "data/digits/manifest.jsonl": lines.encode()})
    spec = SPEC.model_copy(
        update={"source": SPEC.source.model_copy(update={"manifest_uri": "s3://data/digits/manifest.jsonl"})}
    )
    outcome = dataset.reconcile(spec, _ctx(store))
    assert isinstance(outcome, Outcome)
    assert outcome.conditions[0].reason == "ContractViolated"
    assert len(outcome.fields["violations"]) == 20
    # 500 missing objects, and the contract's required schema.json is not in the manifest.
    assert "(+498 more)" in outcome.conditions[0].message


class StreamingStore(InMemoryStore):
    """`count` data objects listed as they are asked for, and their manifest (held as bytes, read a
    line at a time): what the reconcile holds beyond that is its own."""

    def __init__(self, count: int, *, reverse_manifest: bool = False) -> None:
        rows = [
            shared.encode_manifest_line(shared.ManifestEntry(f"part-{n:08d}.npz", 100 + n, f"{n:064x}"))
            for n in range(count)
        ]
        if reverse_manifest:
            rows.reverse()
        super().__init__({"data/digits/manifest.jsonl": "".join(rows).encode()})
        self.count = count

    def list_objects(self, location: S3Location) -> Iterator[ObjectInfo]:
        yield ObjectInfo(f"{location.prefix}manifest.jsonl", 1, "m")
        for n in range(self.count):
            yield ObjectInfo(f"{location.prefix}part-{n:08d}.npz", 100 + n, f"etag-{n}")

    def iter_lines(self, bucket: str, key: str, *, max_bytes: int) -> Iterator[bytes]:
        yield from io.BytesIO(self.get_bytes(bucket, key, max_bytes=max_bytes))


MANIFEST_SPEC = DatasetSpec.model_validate(
    {
        "source": {
            "uri": "s3://data/digits/",
            "credentialsSecretRef": {"name": "s3"},
            "manifestURI": "s3://data/digits/manifest.jsonl",
        },
        "contract": {"minObjects": 2},
    }
)


def test_a_user_manifest_is_checked_against_the_listing_as_both_stream():
    store = StreamingStore(100_000)  # a 10 MB manifest
    tracemalloc.start()
    try:
        outcome = dataset.reconcile(MANIFEST_SPEC, _ctx(store))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert outcome.phase == "Ready", outcome.conditions
    assert outcome.fields["objectCount"] == 100_000
    # The manifest's own fingerprint (sha256 checksums), as the trainer computes it from the file.
    manifest = manifest_from_jsonl(store.objects["data/digits/manifest.jsonl"].decode())
    assert outcome.fields["fingerprint"] == manifest.fingerprint
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB"  # 0.3 MiB; read whole (before), 82 MiB


def test_an_unsorted_user_manifest_is_sorted_and_gives_the_same_result():
    ordered = dataset.reconcile(MANIFEST_SPEC, _ctx(StreamingStore(50)))
    unordered = dataset.reconcile(MANIFEST_SPEC, _ctx(StreamingStore(50, reverse_manifest=True)))
    assert unordered.phase == ordered.phase == "Ready"
    assert unordered.fields["fingerprint"] == ordered.fields["fingerprint"]
