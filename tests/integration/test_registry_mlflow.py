"""The MLflow registry provider against a real MLflow 3.17 server (sqlite registry, moto S3 artifacts).

What the provider wrote is read back with mlflow's own `MlflowClient`, not with the provider.
Authentication: the session's server runs without auth, and MLflow OSS without auth accepts any
token, so a wrong token cannot be refused there. The refusal is checked against a second server
running MLflow's basic-auth app, which refuses a Bearer token (it only knows user names and
passwords). A 5xx and a non-MLflow 404 come from a plain HTTP server on loopback standing where a
proxy in front of MLflow would be.
"""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Iterator

import pytest
from mlflow import MlflowClient
from prometheus_client import REGISTRY

from mlops_operator.dev.mlflow import LocalMlflow
from mlops_operator.dev.s3 import LocalS3
from mlops_operator.integrations.registry import (
    ARCHIVED_TAG,
    UID_TAG,
    RegistryRejectedError,
    RegistryTarget,
    RegistryUnavailableError,
    RegistryVersionNotFoundError,
    VersionRequest,
    open_registry,
)
from mlops_operator.integrations.registry.mlflow import METRIC_TAG_PREFIX, MlflowRegistry

TOKEN = f"mlops-test-credential-{uuid.uuid4().hex}"


def registry_for(uri: str, model: str, timeout_seconds: float = 5.0) -> MlflowRegistry:
    target = RegistryTarget(
        provider="mlflow", model_name=model, project="experiments", tracking_uri=uri, credential=TOKEN
    )
    registry = open_registry(target, timeout_seconds=timeout_seconds)
    assert isinstance(registry, MlflowRegistry)
    return registry


def request(uid: str | None = None, **tags: str) -> VersionRequest:
    return VersionRequest(
        uid=uid or str(uuid.uuid4()),
        source_uri="s3://models/digits/model.onnx",
        tags={"mlops.dev/trainingrun": "digits-run", "mlops.dev/dataset-fingerprint": "sha256:abc", **tags},
        description="ModelVersion team-a/digits",
        metrics={"accuracy": 0.97, "p95 latency(ms)": 3.5},
    )


def requests_sent() -> dict[tuple[str, str], float]:
    """mlops_registry_requests_total of the mlflow provider, by (operation, result)."""
    counts: dict[tuple[str, str], float] = {}
    for family in REGISTRY.collect():
        if family.name != "mlops_registry_requests":
            continue
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels["provider"] == "mlflow":
                counts[(sample.labels["operation"], sample.labels["result"])] = sample.value
    return counts


def sent_since(before: dict[tuple[str, str], float]) -> dict[tuple[str, str], int]:
    after = requests_sent()
    return {
        key: int(value - before.get(key, 0)) for key, value in after.items() if value != before.get(key, 0)
    }


@pytest.fixture
def model() -> str:
    return f"digits-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(mlflow_server: LocalMlflow) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)


def test_register_creates_the_model_and_a_tagged_version(
    mlflow_server: LocalMlflow, client: MlflowClient, model: str
) -> None:
    registry = registry_for(mlflow_server.tracking_uri, model)
    wanted = request()
    before = requests_sent()
    registered = registry.register(wanted)

    # Search (none), create the version (no such model), create the model, create the version.
    assert sent_since(before) == {
        ("search_model_versions", "ok"): 1,
        ("create_model_version", "notfound"): 1,
        ("create_registered_model", "ok"): 1,
        ("create_model_version", "ok"): 1,
    }
    assert registered.version == "1"
    assert registered.url == f"{mlflow_server.tracking_uri}/#/models/{model}/versions/1"
    assert registered.aliases == ()
    assert not registered.archived
    stored = client.get_model_version(model, "1")
    assert stored.source == wanted.source_uri
    assert stored.description == wanted.description
    assert stored.tags[UID_TAG] == wanted.uid
    assert stored.tags["mlops.dev/trainingrun"] == "digits-run"
    assert stored.tags["mlops.dev/dataset-fingerprint"] == "sha256:abc"
    assert stored.tags[METRIC_TAG_PREFIX + "accuracy"] == "0.97"
    # A metric name with characters MLflow refuses in tag keys is made safe, not refused.
    assert stored.tags[METRIC_TAG_PREFIX + "p95 latency_ms_"] == "3.5"
    assert registered.tags == stored.tags
    assert client.get_registered_model(model).name == model


def test_register_is_idempotent_per_uid(mlflow_server: LocalMlflow, client: MlflowClient, model: str) -> None:
    registry = registry_for(mlflow_server.tracking_uri, model)
    first = request()
    assert registry.register(first).version == "1"

    before = requests_sent()
    again = registry.register(first)
    # Found by its uid tag, then read for its aliases (search results carry none): no creation.
    assert sent_since(before) == {("search_model_versions", "ok"): 1, ("get_model_version", "ok"): 1}
    assert again.version == "1"
    assert registry.find(first.uid) == again

    before = requests_sent()
    second = registry.register(request())
    # The registered model exists now: search, create the version.
    assert sent_since(before) == {("search_model_versions", "ok"): 1, ("create_model_version", "ok"): 1}
    assert second.version == "2"
    versions = client.search_model_versions(f"name = '{model}'")
    assert sorted(v.version for v in versions) == ["1", "2"]
    assert registry.find(str(uuid.uuid4())) is None


def test_aliases_move_and_come_off_only_their_version(
    mlflow_server: LocalMlflow, client: MlflowClient, model: str
) -> None:
    registry = registry_for(mlflow_server.tracking_uri, model)
    v1 = registry.register(request()).version
    v2 = registry.register(request()).version

    before = requests_sent()
    on_v1 = registry.set_aliases(v1, add=["production", "candidate"], remove=[])
    # Read the version, set two aliases, read it back.
    assert sent_since(before) == {("get_model_version", "ok"): 2, ("set_registered_model_alias", "ok"): 2}
    assert on_v1.aliases == ("candidate", "production")

    before = requests_sent()
    assert registry.set_aliases(v1, add=["production"], remove=[]).aliases == ("candidate", "production")
    assert sent_since(before) == {("get_model_version", "ok"): 1}  # nothing to change: one read

    on_v2 = registry.set_aliases(v2, add=["production"], remove=[])
    assert on_v2.aliases == ("production",)
    assert client.get_model_version_by_alias(model, "production").version == v2
    assert client.get_model_version(model, v1).aliases == ["candidate"]
    assert registry.get(v1) is not None
    assert registry.get(v1).aliases == ("candidate",)  # type: ignore[union-attr]

    # "production" is v2's now: removing it from v1 leaves v2's alone.
    assert registry.set_aliases(v1, add=[], remove=["production"]).aliases == ("candidate",)
    assert client.get_model_version_by_alias(model, "production").version == v2
    assert registry.set_aliases(v1, add=[], remove=["candidate"]).aliases == ()
    assert client.get_model_version(model, v1).aliases == []
    assert client.get_model_version(model, v2).aliases == ["production"]


def test_archive_takes_every_alias_off_and_tags_the_version(
    mlflow_server: LocalMlflow, client: MlflowClient, model: str
) -> None:
    registry = registry_for(mlflow_server.tracking_uri, model)
    version = registry.register(request()).version
    registry.set_aliases(version, add=["production", "candidate"], remove=[])

    archived = registry.archive(version)
    assert archived.archived
    assert archived.aliases == ()
    stored = client.get_model_version(model, version)
    assert stored.tags[ARCHIVED_TAG] == "true"
    assert stored.aliases == []

    before = requests_sent()
    assert registry.archive(version) == archived
    assert sent_since(before) == {("get_model_version", "ok"): 1}  # already archived: one read


def test_a_version_is_found_by_its_uid_for_archiving_also_once_archived(
    mlflow_server: LocalMlflow, client: MlflowClient, model: str
) -> None:
    """What a ModelVersion's deletion relies on (deletionPolicy Archive): the version its UID tags is
    found without status naming it, and is found again, archived, when a deletion is retried."""
    registry = registry_for(mlflow_server.tracking_uri, model)
    uid = str(uuid.uuid4())
    registry.register(request())  # another object's version of the same model
    mine = registry.register(request(uid))
    registry.set_aliases(mine.version, add=["champion"], remove=[])
    found = registry.find(uid)
    assert found is not None
    assert (found.version, found.aliases) == (mine.version, ("champion",))
    registry.archive(found.version)
    again = registry.find(uid)
    assert again is not None
    assert (again.version, again.archived, again.aliases) == (mine.version, True, ())
    assert client.get_model_version(model, mine.version).tags[ARCHIVED_TAG] == "true"
    assert registry.find(str(uuid.uuid4())) is None  # never registered: nothing to archive


def test_missing_versions(mlflow_server: LocalMlflow, model: str) -> None:
    registry = registry_for(mlflow_server.tracking_uri, model)
    assert registry.get("1") is None  # no such registered model
    registry.register(request())
    before = requests_sent()
    assert registry.get("7") is None
    assert sent_since(before) == {("get_model_version", "notfound"): 1}
    assert registry.get("v3") is None  # a W&B version name: not asked
    with pytest.raises(RegistryVersionNotFoundError, match="has no version '7'"):
        registry.set_aliases("7", add=["production"], remove=[])
    with pytest.raises(RegistryVersionNotFoundError):
        registry.archive("7")


def test_names_the_registry_refuses(mlflow_server: LocalMlflow) -> None:
    bad_model = registry_for(mlflow_server.tracking_uri, "team/digits")
    before = requests_sent()
    with pytest.raises(RegistryRejectedError) as refused:
        bad_model.register(request())
    assert sent_since(before) == {("search_model_versions", "ok"): 1, ("create_model_version", "rejected"): 1}
    assert "INVALID_PARAMETER_VALUE: Invalid model name 'team/digits'" in str(refused.value)
    assert "team/digits" in str(refused.value)
    # Alias names neither provider takes are refused before any request.
    good = registry_for(mlflow_server.tracking_uri, f"digits-{uuid.uuid4().hex[:8]}")
    version = good.register(request()).version
    for alias in ("latest", "v2", "bad/alias", "uid-123"):
        before = requests_sent()
        with pytest.raises(RegistryRejectedError, match="invalid alias"):
            good.set_aliases(version, add=[alias], remove=[])
        assert sent_since(before) == {}


def test_outage_and_recovery(mlflow_server: LocalMlflow, model: str) -> None:
    registry = registry_for(mlflow_server.tracking_uri, model, timeout_seconds=5)
    registered = registry.register(request(uid="0b6f7d1e-0000-4000-8000-000000000001"))
    mlflow_server.stop()
    try:
        started = time.monotonic()
        before = requests_sent()
        with pytest.raises(RegistryUnavailableError) as unavailable:
            registry.register(request(uid="0b6f7d1e-0000-4000-8000-000000000002"))
        assert time.monotonic() - started < 5 + 3  # one attempt, no retries with backoff
        assert sent_since(before) == {("search_model_versions", "unavailable"): 1}
        assert mlflow_server.tracking_uri in str(unavailable.value)
        with pytest.raises(RegistryUnavailableError):
            registry.get(registered.version)
    finally:
        mlflow_server.start()
    # Same port, same sqlite file: the same data, and the provider object works again.
    assert registry.get(registered.version) == registered
    assert registry.register(request(uid="0b6f7d1e-0000-4000-8000-000000000002")).version == "2"


def test_a_server_that_does_not_answer_costs_one_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)  # connections are accepted by the kernel and never answered
        registry = registry_for(f"http://127.0.0.1:{listener.getsockname()[1]}", "digits", timeout_seconds=1)
        started = time.monotonic()
        with pytest.raises(RegistryUnavailableError, match="timed out"):
            registry.get("1")
        # MLflow's default (7 retries with backoff) would take minutes.
        assert time.monotonic() - started < 1 + 2


class _Responder(http.server.BaseHTTPRequestHandler):
    """Answers every request with the status in the path's first segment: a proxy in front of MLflow."""

    def do_GET(self) -> None:
        status = int(self.path.strip("/").split("/")[0])
        body = b"<html>upstream says no</html>"
        self.send_response(status)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def proxy() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Responder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_proxy_errors(proxy: str) -> None:
    before = requests_sent()
    with pytest.raises(RegistryUnavailableError, match="HTTP 503"):
        registry_for(f"{proxy}/503", "digits").get("1")
    with pytest.raises(RegistryUnavailableError, match="HTTP 429"):
        registry_for(f"{proxy}/429", "digits").get("1")
    with pytest.raises(RegistryRejectedError, match="trackingURI") as refused:
        registry_for(f"{proxy}/404", "digits").get("1")
    assert "HTTP 404" in str(refused.value)
    assert sent_since(before) == {
        ("get_model_version", "unavailable"): 2,
        ("get_model_version", "rejected"): 1,
    }


@pytest.fixture(scope="module")
def mlflow_with_auth(s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMlflow]:
    server = LocalMlflow(
        workdir=tmp_path_factory.mktemp("mlflow-auth"), s3_endpoint_url=s3.endpoint_url, basic_auth=True
    )
    with server:
        yield server


def test_a_refused_token_is_rejected_with_what_to_fix(mlflow_with_auth: LocalMlflow) -> None:
    registry = registry_for(mlflow_with_auth.tracking_uri, "digits")
    before = requests_sent()
    with pytest.raises(RegistryRejectedError) as refused:
        registry.register(request())
    assert sent_since(before) == {("search_model_versions", "rejected"): 1}
    message = str(refused.value)
    assert "HTTP 401" in message
    assert "credentialsSecretRef" in message
    assert TOKEN not in message


def test_the_credential_is_in_no_message_and_no_log_record(
    mlflow_server: LocalMlflow, mlflow_with_auth: LocalMlflow, proxy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # every logger: mlflow's, urllib3's, the operator's
    errors: list[BaseException] = []
    model = f"digits-{uuid.uuid4().hex[:8]}"
    working = registry_for(mlflow_server.tracking_uri, model)
    version = working.register(request()).version
    working.set_aliases(version, add=["production"], remove=[])
    working.archive(version)
    for uri, model_name in [
        (mlflow_with_auth.tracking_uri, "digits"),  # 401
        (f"{proxy}/503", "digits"),
        (f"{proxy}/403", "digits"),
        (mlflow_server.tracking_uri, "team/digits"),  # 400 from MLflow
        ("http://127.0.0.1:9", "digits"),  # connection refused (discard port)
    ]:
        with pytest.raises((RegistryRejectedError, RegistryUnavailableError)) as failed:
            registry_for(uri, model_name).register(request())
        errors.append(failed.value)
    assert len(caplog.records) > 0
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    for error in errors:
        assert TOKEN not in "".join(traceback.format_exception(error))
        assert TOKEN not in repr(error)
    assert TOKEN not in repr(working.target)
