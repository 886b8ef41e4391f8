"""The W&B registry provider, as far as it runs without a W&B server: the real `wandb` SDK (0.31) in
offline mode, which records what it would send in the run's transaction log (run-<id>.wandb); the
test reads that log back.

Exercised here: `register` up to logging the artifact (the run's settings, name, config and key
handling; the "model" artifact holding the model package, built files with their digest and bucket
files as references with checksum off, or only a reference to the source URI; its metadata with
metrics, lineage and GPU target; its `uid-<uid>` alias), the lock around runs, the refusals made
before any request (no API key, alias names, package paths), and how real wandb exception objects
are classified. The logs are read back only after `wandb.teardown()` (see `offline_runs`).

NOT exercised against a server (none can run here; these calls are unverified):
- `find` and `get`: `wandb.Api(api_key=…).artifact("wandb-registry-model/<name>:<alias|version>")`,
  including the resolution of the registry's organization from `target.entity`;
- the `Api` constructor's key check (`_verify_login`);
- the online half of `register`: the lookup of an already logged artifact by its uid alias, the
  upload of the package's built files, `Artifact.wait`, and linking to the registry collection
  with its aliases (`Run.link_artifact` / `Artifact.link`), which the SDK refuses offline
  (NotImplementedError);
- `wandb.Api().artifact("<entity>/<project>/<name>:<alias>")` and its `.download()` (the built files
  from W&B, the references from the bucket with the downloader's own S3 credentials);
- `set_aliases`: `Artifact.aliases = …; Artifact.save()` on the linked version (addAliases /
  deleteAliases), and that adding an alias held by another version moves it;
- `archive`: the alias removal and the metadata update of a linked version;
- which HTTP statuses and messages a real server sends for a bad key, a missing project or artifact,
  and overload (`classify` is tested on exception objects built as the SDK builds them).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import os
import socket
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import wandb
import wandb.errors
from prometheus_client import REGISTRY
from wandb.proto import wandb_api_pb2, wandb_internal_pb2
from wandb.sdk.lib.service.service_connection import WandbApiFailedError

from mlops_operator.integrations.registry import (
    UID_TAG,
    PackageFile,
    RegistryRejectedError,
    RegistryTarget,
    RegistryUnavailableError,
    VersionRequest,
    open_registry,
)
from mlops_operator.integrations.registry import wandb as wandb_module
from mlops_operator.integrations.registry.wandb import (
    METRICS_KEY,
    RegistryBusyError,
    WandbRegistry,
    _NotFoundError,
    classify,
)

API_KEY = "a3f09c1d" * 5  # shaped like a W&B key (40 hex characters)
SOURCE_URI = "s3://no-such-bucket-anywhere/models/digits/model.plan"


@pytest.fixture(autouse=True, scope="module")
def _stop_wandb_service() -> Iterator[None]:
    """The offline runs start wandb-core and export WANDB_SERVICE so that child processes share it:
    end both here, so no later test's subprocess finds this module's service."""
    before = os.environ.get("WANDB_SERVICE")
    yield
    wandb.teardown()
    if before is None:
        os.environ.pop("WANDB_SERVICE", None)
    else:
        os.environ["WANDB_SERVICE"] = before


def target(credential: str | None = API_KEY, model: str = "digits") -> RegistryTarget:
    return RegistryTarget(
        provider="wandb", model_name=model, project="mnist", entity="team-a", credential=credential
    )


def version_request(uid: str | None = None) -> VersionRequest:
    return VersionRequest(
        uid=uid or str(uuid.uuid4()),
        source_uri=SOURCE_URI,
        tags={"mlops.dev/trainingrun": "digits-run", "mlops.dev/dataset-fingerprint": "sha256:abc"},
        description="ModelVersion team-a/digits",
        metrics={"accuracy": 0.97},
    )


def wandb_requests() -> dict[tuple[str, str], float]:
    counts: dict[tuple[str, str], float] = {}
    for family in REGISTRY.collect():
        if family.name == "mlops_registry_requests":
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels["provider"] == "wandb":
                    counts[(sample.labels["operation"], sample.labels["result"])] = sample.value
    return counts


def read_transaction_log(path: Path) -> list[wandb_internal_pb2.Record]:
    """The records of a complete run-<id>.wandb file: LevelDB's log format (32 KiB blocks of chunks
    with a 7-byte header: CRC-32 (IEEE, over the type byte and the data), length, type
    FULL/FIRST/MIDDLE/LAST) after W&B's 7-byte file header. A torn chunk, a bad checksum or a log
    that does not end with the run's exit record fails: a test must not read a log still being
    written (see `offline_runs`)."""
    data = path.read_bytes()
    assert data[:4] == b":W&B", path
    block, position, pending, records = 32768, 7, b"", []
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # a block's tail too short for a header is padding
            position += left
            continue
        checksum, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zeros: nothing written past here
            break
        chunk = data[position + 7 : position + 7 + length]
        assert len(chunk) == length, f"{path}: torn chunk at {position}"
        assert zlib.crc32(bytes([kind]) + chunk) == checksum, f"{path}: bad checksum at {position}"
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    kinds = [record.WhichOneof("record_type") for record in records]
    assert kinds, f"{path}: no record: the log is still being written"
    assert kinds[-1] == "exit", f"{path}: incomplete transaction log, records {kinds}"
    return records


def offline_runs(directory: Path) -> list[list[wandb_internal_pb2.Record]]:
    """The transaction logs of the offline runs under `directory`, each read once complete.

    wandb-core keeps a log's last (partial) 32 KiB block in memory and writes it when it closes the
    run's stream; `Run.finish` asks for that close (`inform_finish`) without waiting for it, so right
    after `register` returns the newest log may hold its 7-byte header only (the clean-clone CI
    flake of test_concurrent_registrations_never_queue_behind_each_other: the read-back missed the
    last run's `uid-…` alias under CPU contention). `wandb.teardown()` sends the service's teardown
    on the same connection, after every inform_finish; wandb-core handles a connection's requests in
    order, closing each finished stream (and its log) before it tears down, and teardown returns
    when the service process has exited: after it, every log is complete. The next `wandb.init`
    starts a new service."""
    wandb.teardown()
    return [read_transaction_log(log) for log in sorted(directory.glob("wandb/offline-run-*/run-*.wandb"))]


def records_of(records: list[wandb_internal_pb2.Record], kind: str) -> list[Any]:
    return [getattr(r, kind) for r in records if r.WhichOneof("record_type") == kind]


def test_register_offline_logs_the_model_artifact_as_a_reference(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    environment_before = dict(os.environ)
    registry = WandbRegistry(target(), offline_dir=tmp_path)
    wanted = version_request()
    before = wandb_requests()

    registered = registry.register(wanted)

    assert registered.version == "offline"  # nothing is linked offline
    assert registered.tags[UID_TAG] == wanted.uid
    after = wandb_requests()
    assert {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)} == {
        ("init_run", "ok"): 1,
        ("log_artifact", "ok"): 1,
        ("finish_run", "ok"): 1,
    }

    [records] = offline_runs(tmp_path)
    [run] = records_of(records, "run")
    assert (run.entity, run.project, run.job_type) == ("team-a", "mnist", "register-model")
    [artifact] = records_of(records, "artifact")
    assert (artifact.entity, artifact.project) == ("team-a", "mnist")
    assert (artifact.type, artifact.name) == ("model", "digits")
    assert artifact.description == wanted.description
    assert set(artifact.aliases) == {f"uid-{wanted.uid}", "latest"}
    assert json.loads(artifact.metadata) == {
        **wanted.tags,
        UID_TAG: wanted.uid,
        METRICS_KEY: {"accuracy": 0.97},
    }
    # One entry, a reference to the source: not a copy, and not read (its digest is the URI itself,
    # what the SDK records when checksum is off: the bucket does not even exist).
    [entry] = artifact.manifest.contents
    assert (entry.path, entry.ref, entry.digest) == ("model.plan", SOURCE_URI, SOURCE_URI)
    assert not entry.local_path

    # The key: in no file the run left, in no environment variable, in no log record.
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path
    assert API_KEY not in {v for k, v in os.environ.items() if environment_before.get(k) != v}
    assert all(API_KEY not in record.getMessage() for record in caplog.records)
    assert API_KEY not in repr(registry.target)


MLMODEL = b"""artifact_path: model
flavors:
  onnx:
    onnx_version: 1.17.0
    data: model.onnx
signature:
  inputs: '[{"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 1, 8, 8]}}]'
"""
MODEL_URI = "s3://no-such-bucket-anywhere/models/digits/model.onnx"
ENGINE_URI = "s3://no-such-bucket-anywhere/models/digits/fp16/model.plan"


def package_request(uid: str | None = None) -> VersionRequest:
    """A request shaped as the ModelVersion handler builds it (handlers/modelversion/package.py):
    the MLflow Model package, built files and files left in the tenant's bucket."""
    uid = uid or str(uuid.uuid4())
    return VersionRequest(
        uid=uid,
        source_uri=ENGINE_URI,
        tags={"mlops.dev/trainingrun": "digits-run", "mlops.dev/dataset-fingerprint": "sha256:abc"},
        description="Trained by TrainingRun team-a/digits-run; compiled to tensorrt fp16 for NVIDIA-H200.",
        metrics={"accuracy": 0.97, "latencyP95Ms": 1.8},
        run_name="team-a/digits-v3",
        params={"optimizer.lr": "0.001", "epochs": "20", "compile.precision": "fp16"},
        files=(
            PackageFile(path="MLmodel", content=MLMODEL),
            PackageFile(path="input_example.json", content=b'{"inputs": [[0.0]]}'),
            PackageFile(path="model.onnx", uri=MODEL_URI, size_bytes=412_000),
            PackageFile(path="tensorrt/model.plan", uri=ENGINE_URI, size_bytes=1_250_000),
        ),
        metadata={
            "modelVersion": "team-a/digits-v3",
            "uid": uid,
            "lineage": {"trainingRun": "digits-run", "dataset": "digits", "datasetFingerprint": "sha256:abc"},
            "engine": {
                "format": "tensorrt",
                "precision": "fp16",
                "gpuProduct": "NVIDIA-H200",
                "computeCapability": "9.0",
            },
            "metrics": {"accuracy": 0.97, "latencyP95Ms": 1.8},
            "signature": {"inputs": [{"name": "input", "dtype": "float32", "shape": [-1, 1, 8, 8]}]},
        },
    )


def test_register_offline_logs_the_model_package_with_its_metadata_run_name_and_params(
    tmp_path: Path,
) -> None:
    """The artifact a W&B user gets: the package's built files uploaded (with their MD5 digest), its
    bucket files as references (the URI, not read: the bucket does not exist), metadata with the
    metrics, lineage and GPU target; the run that logs it named after the ModelVersion with the
    training params as config. Read back from the offline run's transaction log, which is what
    `wandb sync` would send. Not verified (needs a W&B server): the upload itself, linking to the
    registry collection and its aliases, and `wandb.Api().artifact(...).download()` (which would
    fetch the references from the bucket with the downloader's S3 credentials)."""
    wanted = package_request()
    WandbRegistry(target(), offline_dir=tmp_path).register(wanted)

    [records] = offline_runs(tmp_path)
    [run] = records_of(records, "run")
    assert run.display_name == "team-a/digits-v3"
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert {key: value for key, value in config.items() if key != "_wandb"} == {
        "optimizer.lr": "0.001",
        "epochs": "20",
        "compile.precision": "fp16",
    }
    [artifact] = records_of(records, "artifact")
    assert (artifact.type, artifact.name) == ("model", "digits")
    assert set(artifact.aliases) == {f"uid-{wanted.uid}", "latest"}
    metadata = json.loads(artifact.metadata)
    assert metadata[METRICS_KEY] == {"accuracy": 0.97, "latencyP95Ms": 1.8}
    assert metadata["lineage"] == wanted.metadata["lineage"]
    assert metadata["engine"]["gpuProduct"] == "NVIDIA-H200"
    assert metadata["engine"]["computeCapability"] == "9.0"
    assert metadata["signature"] == wanted.metadata["signature"]
    assert metadata[UID_TAG] == wanted.uid
    assert metadata["mlops.dev/trainingrun"] == "digits-run"  # lineage tags stay flat: read back as tags

    entries = {entry.path: entry for entry in artifact.manifest.contents}
    assert sorted(entries) == ["MLmodel", "input_example.json", "model.onnx", "tensorrt/model.plan"]
    for package_file in wanted.files:
        entry = entries[package_file.path]
        if package_file.uri is not None:
            assert (entry.ref, entry.digest, entry.size) == (
                package_file.uri,
                package_file.uri,
                package_file.size_bytes,
            )
            assert not entry.local_path
        else:
            assert package_file.content is not None
            assert not entry.ref
            md5 = hashlib.md5(package_file.content).digest()  # noqa: S324 (W&B's file digest)
            assert entry.digest == base64.b64encode(md5).decode()
            assert entry.size == len(package_file.content)
            # Uploaded by `wandb sync` from here: the file exists and holds the content.
            local = Path(entry.local_path)
            assert local.is_relative_to(tmp_path)
            assert local.read_bytes() == package_file.content
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert API_KEY.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("package_file", "problem"),
    [
        (PackageFile(path="../escape", content=b"x"), "not a relative path"),
        (PackageFile(path="/etc/passwd", content=b"x"), "not a relative path"),
        (PackageFile(path="a//b", content=b"x"), "not a relative path"),
        (PackageFile(path="MLmodel"), "either its content or a URI"),
        (PackageFile(path="MLmodel", content=b"x", uri=MODEL_URI), "either its content or a URI"),
    ],
)
def test_a_bad_package_file_is_refused_before_any_run(
    tmp_path: Path, package_file: PackageFile, problem: str
) -> None:
    before = wandb_requests()
    request = dataclasses.replace(package_request(), files=(package_file,))
    with pytest.raises(RegistryRejectedError, match=problem):
        WandbRegistry(target(), offline_dir=tmp_path).register(request)
    assert wandb_requests() == before
    assert not list(tmp_path.glob("wandb/offline-run-*"))
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]  # nothing written, anywhere


def test_concurrent_registrations_never_queue_behind_each_other(tmp_path: Path) -> None:
    """One registration at a time holds the SDK's session; the others do not wait for it in the
    operator's shared workers: they are told the registry is busy at once, and succeed on retry."""
    registry = WandbRegistry(target(), offline_dir=tmp_path)
    uids = [str(uuid.uuid4()) for _ in range(3)]
    results: dict[str, BaseException | None] = {}
    waited: dict[str, float] = {}
    start = threading.Barrier(len(uids))

    def register(uid: str) -> None:
        start.wait()
        began = time.monotonic()
        try:
            registry.register(version_request(uid))
            results[uid] = None
        except BaseException as error:  # reported by the assertions below
            results[uid] = error
        waited[uid] = time.monotonic() - began

    threads = [threading.Thread(target=register, args=(uid,)) for uid in uids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    busy = [uid for uid, error in results.items() if isinstance(error, RegistryBusyError)]
    assert all(error is None or isinstance(error, RegistryBusyError) for error in results.values())
    assert busy, results  # turned away while one ran...
    assert len(busy) < len(uids), results  # ...which did run
    assert all(waited[uid] < 1.0 for uid in busy), waited  # at once, not after the running one
    assert all("another registration holds the W&B session" in str(results[uid]) for uid in busy)
    for uid in busy:  # the reconcile's retry
        registry.register(version_request(uid))
    runs = offline_runs(tmp_path)
    assert len(runs) == 3
    logged = sorted(alias for run in runs for a in records_of(run, "artifact") for alias in a.aliases)
    assert logged == sorted(["latest"] * 3 + [f"uid-{uid}" for uid in uids])


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A W&B server that accepts connections and never answers: a tenant's W&B having a bad day."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    listener.close()


def test_a_slow_registry_holds_no_worker_past_its_timeout_and_blocks_no_other(
    tmp_path: Path, silent_server: str
) -> None:
    slow_target = RegistryTarget(
        provider="wandb",
        model_name="digits",
        project="mnist",
        entity="team-slow",
        credential=API_KEY,
        tracking_uri=silent_server,
    )
    slow = WandbRegistry(slow_target, timeout_seconds=3, register_timeout_seconds=0.5)
    began = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=r"did not finish within 0.5s"):
        slow.register(version_request())
    assert time.monotonic() - began < 2.0  # the worker is back; the registration goes on elsewhere
    # Meanwhile another tenant's registration is turned away at once, not queued behind it.
    other = WandbRegistry(target(), offline_dir=tmp_path)
    began = time.monotonic()
    with pytest.raises(RegistryBusyError):
        other.register(version_request())
    assert time.monotonic() - began < 0.5
    # Once the slow one has given up (its own call timeout), the next registration goes through.
    deadline = time.monotonic() + 60
    while wandb_module._RUN_LOCK.locked() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert other.register(version_request()).version == "offline"


def test_offline_has_no_server_calls(tmp_path: Path) -> None:
    registry = WandbRegistry(target(), offline_dir=tmp_path)
    with pytest.raises(NotImplementedError):
        registry.find(str(uuid.uuid4()))
    with pytest.raises(NotImplementedError):
        registry.get("v1")
    with pytest.raises(NotImplementedError):
        registry.set_aliases("v1", add=["production"], remove=[])
    with pytest.raises(NotImplementedError):
        registry.archive("v1")


def test_no_key_is_refused_before_any_request() -> None:
    before = wandb_requests()
    registry = open_registry(target(credential=None))
    assert isinstance(registry, WandbRegistry)
    with pytest.raises(RegistryRejectedError, match="credentialsSecretRef"):
        registry.register(version_request())
    with pytest.raises(RegistryRejectedError, match="credentialsSecretRef"):
        registry.get("v1")
    assert wandb_requests() == before


@pytest.mark.parametrize(
    "alias", ["latest", "Latest", "v3", "uid-0b6f7d1e", "prod/blue", "prod:blue", "", "a" * 256]
)
def test_alias_names_refused_before_any_request(alias: str) -> None:
    before = wandb_requests()
    with pytest.raises(RegistryRejectedError, match="invalid alias"):
        open_registry(target()).set_aliases("v1", add=[alias], remove=[])
    assert wandb_requests() == before


def test_an_alias_both_added_and_removed_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="both added and removed"):
        open_registry(target()).set_aliases("v1", add=["production"], remove=["production"])


def _api_failure(status: int, message: str = "failed") -> wandb.errors.CommError:
    """A CommError as `normalize_exceptions` builds it from wandb-core's error response."""
    failure = WandbApiFailedError(
        message, wandb_api_pb2.ApiErrorResponse(message=message, http_status=status)
    )
    return wandb.errors.CommError(message, failure)


def _http_failure(status: int) -> wandb.errors.CommError:
    response = requests.Response()
    response.status_code = status
    return wandb.errors.CommError(f"HTTP {status}", requests.HTTPError(response=response))


def _login_failure(cause: BaseException) -> wandb.errors.AuthenticationError:
    """The AuthenticationError `wandb.Api`'s key check raises (wandb_login.py), from its cause."""
    error = wandb.errors.AuthenticationError(f"Failed to verify credentials with http://w: {cause}")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(
    ("error", "meaning"),
    [
        (_api_failure(401, "user is not logged in"), "rejected"),
        (_api_failure(403, "permission denied"), "rejected"),
        (_api_failure(400, "invalid alias"), "rejected"),
        (_api_failure(404), "notfound"),
        (_api_failure(429), "unavailable"),
        (_api_failure(502), "unavailable"),
        (_api_failure(0, "dial tcp: connection refused"), "unavailable"),
        (_api_failure(200, "project not found"), "notfound"),
        (_api_failure(200, "GraphQL: invalid input"), "rejected"),
        (_http_failure(500), "unavailable"),
        (_http_failure(401), "rejected"),
        (wandb.errors.AuthenticationError("API key must be 40 characters long"), "rejected"),
        (_login_failure(_api_failure(401, "user is not logged in").exc), "rejected"),
        (
            _login_failure(WandbApiFailedError("the service process is busy and did not respond in time.")),
            "unavailable",
        ),
        (_login_failure(ConnectionResetError("wandb-core went away")), "unavailable"),
        (wandb.errors.UsageError("bad settings"), "rejected"),
        (
            ValueError("artifact membership 'digits:uid-x' not found in 'org/wandb-registry-model'"),
            "notfound",
        ),
        (ValueError("Aliases must not contain any of the following characters: '/', ':'"), "rejected"),
        (TimeoutError("init timed out"), "unavailable"),
        (ConnectionResetError(), "unavailable"),
    ],
)
def test_classify(error: BaseException, meaning: str) -> None:
    assert classify(error) == meaning


def test_sdk_failures_become_the_interface_errors_without_the_key() -> None:
    registry = WandbRegistry(target())

    def fails(error: BaseException) -> Any:
        def call() -> None:
            raise error

        return call

    # "Not found" answers a lookup; anywhere else (logging into a missing project) a person must act.
    with pytest.raises(_NotFoundError):
        registry._call("get_artifact", fails(ValueError("artifact 'digits:v9' not found")), lookup=True)
    with pytest.raises(RegistryRejectedError, match="project 'mnist' not found"):
        registry._call("init_run", fails(_api_failure(404, "project 'mnist' not found")))
    with pytest.raises(RegistryUnavailableError, match="trying again later"):
        registry._call("link_artifact", fails(_api_failure(503, "service unavailable")))
    # An SDK message that echoes the key does not carry it further.
    with pytest.raises(RegistryRejectedError) as refused:
        registry._call("login", fails(wandb.errors.AuthenticationError(f"invalid API key {API_KEY}")))
    assert API_KEY not in str(refused.value)
    assert "credentialsSecretRef" in str(refused.value)


def test_a_busy_registry_is_a_transient_wait_not_an_outage() -> None:
    from mlops_operator.handlers.base import ATTENTION_REASONS, TRANSIENT_REASONS
    from mlops_operator.handlers.registries import registry_problem

    reason, message = registry_problem(RegistryBusyError("another registration holds it"), "registering")
    assert reason == "RegistryBusy"
    assert message == "registering: another registration holds it"
    assert reason in TRANSIENT_REASONS  # retried with backoff by the engine
    assert reason not in ATTENTION_REASONS  # no Warning event: nothing is wrong
