"""MLflow model registry through mlflow-skinny's REST store.

Credentials are per provider object (`MlflowHostCreds(token=…)` handed to the store), never the
process-wide MLFLOW_TRACKING_TOKEN: one operator process serves many tenants.

MLflow's HTTP layer retries 7 times with backoff by default (MLFLOW_HTTP_REQUEST_MAX_RETRIES), which
would hold an operator worker for minutes while a registry is down; the store also takes its
timeout from the environment only. `_OneAttemptRestStore` passes `max_retries=0` and this object's
timeout to mlflow's `http_request` on every call instead, without touching the environment, and
classifies the response itself (5xx and 429 are "unavailable", not an error to parse).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, BinaryIO, NoReturn, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import requests
import yaml
from mlflow.entities import (
    ExperimentTag,
    LoggedModel,
    LoggedModelOutput,
    LoggedModelParameter,
    LoggedModelStatus,
    LoggedModelTag,
    Metric,
    Param,
    Run,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag, RegisteredModelTag
from mlflow.exceptions import InvalidUrlException, MlflowException, RestException
from mlflow.store.model_registry.rest_store import RestStore
from mlflow.store.tracking.rest_store import RestStore as TrackingRestStore
from mlflow.utils.proto_json_utils import parse_dict
from mlflow.utils.rest_utils import MlflowHostCreds, http_request

from .base import (
    ARCHIVED_TAG,
    UID_TAG,
    RegisteredVersion,
    RegistryRejectedError,
    RegistryTarget,
    RegistryUnavailableError,
    RegistryVersionNotFoundError,
    VersionRequest,
    check_aliases,
    check_uid,
    count,
    scrub,
)

PROVIDER = "mlflow"
T = TypeVar("T")
# Prefix of the model version tags that carry the evaluation metrics (MLflow model versions have
# no metrics of their own outside a run).
METRIC_TAG_PREFIX = "mlops.dev/metric/"
# Characters MLflow refuses in a tag key (it allows letters, digits, _ - . space : /).
_TAG_KEY_UNSAFE = re.compile(r"[^\w.\- :]")
_ERRNO = re.compile(r"\[Errno -?\d+\] [^'\")\]]+")
# Characters MLflow refuses in a metric key.
_METRIC_KEY_UNSAFE = re.compile(r"[^\w.\- /]")
MANAGED_BY_TAG = "mlops.dev/managed-by"
MANAGED_BY = "mlops-operator"
MLMODEL_FILE = "MLmodel"
_ARTIFACTS_API = "/api/2.0/mlflow-artifacts/artifacts"
# An upload of a large file may take longer than one request's timeout: at least this rate.
_MIN_UPLOAD_BYTES_PER_SECOND = 1_000_000


class _HttpStatusError(Exception):
    """A response that is neither a success nor an MLflow error document."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class _NotFoundError(Exception):
    """RESOURCE_DOES_NOT_EXIST, handled by the caller."""


class _AlreadyExistsError(Exception):
    """RESOURCE_ALREADY_EXISTS, handled by the caller."""


def _one_attempt(  # noqa: PLR0917 - the REST stores' own argument order
    host_creds: MlflowHostCreds,
    endpoint: str,
    method: str,
    json_body: str | None,
    response_proto: Any,
    timeout_seconds: float,
    extra_headers: dict[str, str] | None = None,
) -> Any:
    """One request to an MLflow REST endpoint within `timeout_seconds`, its response classified."""
    body = json.loads(json_body) if json_body is not None else None
    response: requests.Response = http_request(
        host_creds,
        endpoint,
        method,
        max_retries=0,
        backoff_factor=0,
        timeout=timeout_seconds,
        raise_on_status=False,  # a 5xx comes back as a response, classified below
        extra_headers=extra_headers,
        **({"params": body} if method == "GET" else {"json": body}),
    )
    _raise_for_status(response)
    if response.status_code == 200:
        parse_dict(response.json(), response_proto)
    return response_proto


def _raise_for_status(response: requests.Response) -> None:
    status = response.status_code
    if status in (200, 204):
        return
    if status != 429 and status < 500:
        try:
            document = response.json()
        except ValueError:
            document = None
        if isinstance(document, dict) and "error_code" in document:
            raise RestException(document)
    raise _HttpStatusError(status, response.text)


class _OneAttemptRestStore(RestStore):
    """mlflow's model registry REST store, one attempt per request within `timeout_seconds`."""

    def __init__(self, host_creds: MlflowHostCreds, timeout_seconds: float) -> None:
        super().__init__(lambda: host_creds)  # type: ignore[no-untyped-call]
        self._timeout_seconds = timeout_seconds

    def _call_endpoint(
        self,
        api: Any,
        json_body: str | None,
        call_all_endpoints: bool = False,
        extra_headers: dict[str, str] | None = None,
    ) -> Any:
        endpoint, method = self._get_endpoint_from_method(api)  # type: ignore[no-untyped-call]
        proto = self._get_response_from_method(api)  # type: ignore[no-untyped-call]
        return _one_attempt(
            self.get_host_creds(), endpoint, method, json_body, proto, self._timeout_seconds, extra_headers
        )


class _OneAttemptTrackingStore(TrackingRestStore):
    """mlflow's tracking REST store (experiments, runs, logged models), one attempt per request."""

    def __init__(self, host_creds: MlflowHostCreds, timeout_seconds: float) -> None:
        super().__init__(lambda: host_creds)  # type: ignore[no-untyped-call]
        self._timeout_seconds = timeout_seconds

    def _call_endpoint(
        self,
        api: Any,
        json_body: str | None = None,
        endpoint: str | None = None,
        retry_timeout_seconds: float | None = None,
        response_proto: Any = None,
    ) -> Any:
        infos = self._V3_METHOD_TO_INFO if api in self._V3_APIS else self._METHOD_TO_INFO
        default_endpoint, method = infos[api]
        return _one_attempt(
            self.get_host_creds(),
            endpoint or default_endpoint,
            method,
            json_body,
            response_proto or api.Response(),
            self._timeout_seconds,
        )


def _transport_failure(error: BaseException) -> str | None:
    """What went wrong when mlflow's wrapped exception was a connection failure or a timeout (mlflow
    re-raises those as a plain MlflowException with the requests exception as cause or context)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, requests.Timeout):
            return "timed out"
        if isinstance(seen, requests.ConnectionError):
            # urllib3's text buries the reason ("[Errno 111] Connection refused") in a long line.
            reason = _ERRNO.search(str(seen))
            return f"connection failed ({reason.group(0)})" if reason else f"connection failed ({seen})"
        seen = seen.__cause__ or seen.__context__
    return None


class MlflowRegistry:
    provider = PROVIDER

    def __init__(self, target: RegistryTarget, *, timeout_seconds: float = 10.0) -> None:
        if not target.tracking_uri:
            raise RegistryRejectedError("the mlflow provider needs spec.registry.trackingURI")
        if any(c in target.model_name for c in "'`\\"):
            # The name goes into a search filter; MLflow refuses quotes in names anyway.
            raise RegistryRejectedError(f"invalid MLflow registered model name {target.model_name!r}")
        self.target = target
        self.name = target.model_name
        self._uri = target.tracking_uri.rstrip("/")
        self._credential = target.credential
        host_creds = MlflowHostCreds(self._uri, token=target.credential or None)
        self._timeout_seconds = timeout_seconds
        self._store = _OneAttemptRestStore(host_creds, timeout_seconds)
        self._tracking = _OneAttemptTrackingStore(host_creds, timeout_seconds)

    # -- the interface --------------------------------------------------------------------------

    def find(self, uid: str) -> RegisteredVersion | None:
        check_uid(uid)
        query = f"name = '{self.name}' AND tags.`{UID_TAG}` = '{uid}'"
        found = self._call("search_model_versions", self._store.search_model_versions, query, 10)
        if not found:
            return None
        # Two versions with one uid would take a race the operator does not run (one worker per
        # object); should it happen, the first one is the answer, always the same.
        first = min(found, key=lambda v: int(v.version))
        # Search results carry no aliases (MLflow 3.17 leaves them empty): read the version.
        return self.get(str(first.version))

    def get(self, version: str) -> RegisteredVersion | None:
        if not version.isdigit():
            return None  # not an MLflow version number ("v3" is a W&B one): no such version here
        try:
            return self._registered(
                self._call("get_model_version", self._store.get_model_version, self.name, version)
            )
        except _NotFoundError:
            return None

    def register(self, request: VersionRequest) -> RegisteredVersion:
        existing = self.find(request.uid)
        if existing is not None:
            return existing
        source, run_id, model_id = request.source_uri, None, None
        if request.files:
            # An MLflow Model logged by a run: what `models:/<name>/<n>` then loads.
            run_id, model_id = self._log_model(request)
            source = f"models:/{model_id}"
        tags = {**request.tags, **_metric_tags(request.metrics), UID_TAG: request.uid}
        version_tags = [ModelVersionTag(key, value) for key, value in tags.items()]

        def create() -> ModelVersion:
            created: ModelVersion = self._call(
                "create_model_version",
                self._store.create_model_version,
                self.name,
                source,
                run_id,
                version_tags,
                None,  # run_link: the run is on this server
                request.description or None,
                None,  # local_model_path
                model_id,
            )
            return created

        # The registered model usually exists: create the version first, the model only when the
        # registry says it is missing.
        try:
            created = create()
        except _NotFoundError:
            with contextlib.suppress(_AlreadyExistsError):  # created meanwhile: what was wanted
                self._call(
                    "create_registered_model",
                    self._store.create_registered_model,
                    self.name,
                    [RegisteredModelTag(MANAGED_BY_TAG, MANAGED_BY)],
                    f"Versions of {self.name} registered by mlops-operator: each one is a ModelVersion; "
                    "its description names the TrainingRun and Dataset it came from.",
                    exists_ok=True,
                )
            try:
                created = create()
            except _NotFoundError:  # the model was deleted again meanwhile
                raise RegistryUnavailableError(
                    f"MLflow registered model {self.name!r} vanished while registering; trying again later"
                ) from None
        return self._registered(created)

    # -- the logged model (MLflow 3): run, logged model, its artifacts --------------------------

    def _log_model(self, request: VersionRequest) -> tuple[str, str]:
        """(run id, logged model id) of `request.uid`'s MLflow Model, logged now or found from an
        earlier attempt (both carry UID_TAG): every step is idempotent, so a restart midway
        finishes what was begun instead of logging a second model."""
        experiment_id = self._experiment()
        run = self._run(experiment_id, request)
        run_id = str(run.info.run_id)
        model = self._logged_model(experiment_id, run_id, request)
        model_id = str(model.model_id)
        if model.status != LoggedModelStatus.READY:
            self._log_run_data(run, model_id, request)
            self._upload(request, str(model.artifact_location), model_id=model_id, run_id=run_id)
            if model_id not in {o.model_id for o in (run.outputs.model_outputs if run.outputs else [])}:
                self._call(
                    "log_outputs", self._tracking.log_outputs, run_id, [LoggedModelOutput(model_id, 0)]
                )
            self._call(
                "finalize_logged_model",
                self._tracking.finalize_logged_model,
                model_id,
                LoggedModelStatus.READY,
            )
        if run.info.status != "FINISHED":
            self._call(
                "update_run",
                self._tracking.update_run_info,
                run_id,
                RunStatus.from_string("FINISHED"),
                _now_ms(),
                None,
            )
        return run_id, model_id

    def _experiment(self) -> str:
        name = self.target.project
        found = self._call("get_experiment_by_name", self._tracking.get_experiment_by_name, name)
        if found is None:
            try:
                return str(
                    self._call(
                        "create_experiment",
                        self._tracking.create_experiment,
                        name,
                        None,
                        [ExperimentTag(MANAGED_BY_TAG, MANAGED_BY)],
                        exists_ok=True,
                    )
                )
            except _AlreadyExistsError:  # created meanwhile
                found = self._call("get_experiment_by_name", self._tracking.get_experiment_by_name, name)
                if found is None:
                    raise RegistryUnavailableError(
                        f"MLflow experiment {name!r} vanished while registering; trying again later"
                    ) from None
        if found.lifecycle_stage != "active":
            raise RegistryRejectedError(
                f"MLflow experiment {name!r} at {self._public_uri()} is deleted: restore it, or name "
                "another experiment in spec.registry.project"
            )
        return str(found.experiment_id)

    def _run(self, experiment_id: str, request: VersionRequest) -> Run:
        query = f"tags.`{UID_TAG}` = '{check_uid(request.uid)}'"
        found = self._call(
            "search_runs", self._tracking.search_runs, [experiment_id], query, ViewType.ACTIVE_ONLY, 10
        )
        if found:
            first: Run = min(found, key=lambda r: (r.info.start_time or 0, r.info.run_id))
            return first
        tags = {
            **request.tags,
            UID_TAG: request.uid,
            MANAGED_BY_TAG: MANAGED_BY,
            "mlflow.user": MANAGED_BY,
            "mlflow.source.name": MANAGED_BY,
            "mlflow.source.type": "JOB",
            "mlflow.note.content": request.description,
        }
        created: Run = self._call(
            "create_run",
            self._tracking.create_run,
            experiment_id,
            MANAGED_BY,
            _now_ms(),
            [RunTag(key, value) for key, value in tags.items() if value],
            request.run_name or None,
        )
        return created

    def _logged_model(self, experiment_id: str, run_id: str, request: VersionRequest) -> LoggedModel:
        found = self._call(
            "search_logged_models",
            self._tracking.search_logged_models,
            [experiment_id],
            f"source_run_id = '{run_id}'",
            None,
            50,
        )
        usable = [m for m in found if m.status in (LoggedModelStatus.READY, LoggedModelStatus.PENDING)]
        if usable:  # READY first, then the oldest PENDING one: always the same answer
            return min(usable, key=lambda m: (m.status != LoggedModelStatus.READY, m.creation_timestamp))
        tags = {**request.tags, UID_TAG: request.uid, MANAGED_BY_TAG: MANAGED_BY}
        return self._call(
            "create_logged_model",
            self._tracking.create_logged_model,
            experiment_id,
            self.name,
            run_id,
            [LoggedModelTag(key, value) for key, value in tags.items() if value],
            [LoggedModelParameter(key, value) for key, value in request.params.items()],
        )

    def _log_run_data(self, run: Run, model_id: str, request: VersionRequest) -> None:
        """The params and the evaluation metrics the run does not have yet (a retry logs nothing
        twice); the metrics are the logged model's too (model_id), as mlflow.log_metric does."""
        params = [Param(k, v) for k, v in request.params.items() if k not in run.data.params]
        now = _now_ms()
        metrics = [
            Metric(_metric_key(k), float(v), now, 0, model_id=model_id, run_id=str(run.info.run_id))
            for k, v in request.metrics.items()
            if _metric_key(k) not in run.data.metrics and math.isfinite(float(v))
        ]
        # LogBatch takes at most 100 params and 1000 metrics per request.
        for start in range(0, max(len(params), len(metrics)), 100):
            self._call(
                "log_batch",
                self._tracking.log_batch,
                str(run.info.run_id),
                metrics[start : start + 100],
                params[start : start + 100],
                [],
            )

    def _upload(self, request: VersionRequest, artifact_location: str, *, model_id: str, run_id: str) -> None:
        """Every file of the package into the logged model's artifacts, through the server's
        proxied artifact API with this object's credential (never the operator's own identity
        on an artifact store); the large files stream from the tenant's bucket."""
        where = urlsplit(artifact_location)
        if where.scheme != "mlflow-artifacts" or where.netloc:
            raise RegistryRejectedError(
                f"the MLflow server at {self._public_uri()} keeps this experiment's artifacts at "
                f"{where.scheme}://…, which the operator does not write: it uploads through the server "
                "(mlflow server --serve-artifacts, mlflow-artifacts:/ locations) with the registry credential"
            )
        base = f"{_ARTIFACTS_API}/{where.path.strip('/')}"
        for item in request.files:
            if item.path == MLMODEL_FILE and item.content is not None:
                content = _with_registry_ids(item.content, model_id, run_id, artifact_location)
                self._put(f"{base}/{item.path}", content, len(content))
            elif item.content is not None:
                self._put(f"{base}/{item.path}", item.content, len(item.content))
            elif item.uri is not None:
                if request.read is None:
                    raise ValueError(f"{item.path} is in the bucket but the request has no reader")
                stream, size = request.read(item.uri)
                try:
                    self._put(f"{base}/{item.path}", _SizedStream(stream, size, item.uri), size)
                finally:
                    stream.close()

    def _put(self, endpoint: str, data: bytes | _SizedStream, size: int) -> None:
        operation = "upload_artifact"
        try:
            response = http_request(
                self._store.get_host_creds(),
                quote(endpoint),
                "PUT",
                max_retries=0,
                backoff_factor=0,
                timeout=max(self._timeout_seconds, size / _MIN_UPLOAD_BYTES_PER_SECOND),
                raise_on_status=False,
                data=data,
                extra_headers={"Content-Type": "application/octet-stream"},
            )
            _raise_for_status(response)
        except _SourceReadError as error:
            self._fail(operation, "unavailable", str(error), None)
        except (_HttpStatusError, MlflowException) as error:
            self._classified(operation, error)
        count(PROVIDER, operation, "ok")

    def set_aliases(self, version: str, add: Sequence[str], remove: Sequence[str]) -> RegisteredVersion:
        check_aliases(add, remove)
        current = self._require(version)
        try:
            changed = self._move_aliases(version, current, add, remove)
        except _NotFoundError:  # the version went away meanwhile
            raise self._version_not_found(version) from None
        return self._require(version) if changed else current

    def _move_aliases(
        self, version: str, current: RegisteredVersion, add: Sequence[str], remove: Sequence[str]
    ) -> bool:
        changed = False
        for alias in sorted(set(add) - set(current.aliases)):
            # An MLflow alias names one version: setting it moves it off the one it was on.
            self._call(
                "set_registered_model_alias",
                self._store.set_registered_model_alias,
                self.name,
                alias,
                version,
            )
            changed = True
        for alias in sorted(set(remove) & set(current.aliases)):
            # Deleting an alias deletes it wherever it points; only aliases seen on `version` are
            # deleted (one request later: the race with another writer is that short).
            self._delete_alias(alias)
            changed = True
        return changed

    def archive(self, version: str) -> RegisteredVersion:
        current = self._require(version)
        for alias in current.aliases:
            self._delete_alias(alias)
        if not current.archived:
            tag = ModelVersionTag(ARCHIVED_TAG, "true")
            try:
                self._call(
                    "set_model_version_tag", self._store.set_model_version_tag, self.name, version, tag
                )
            except _NotFoundError:  # the version went away meanwhile
                raise self._version_not_found(version) from None
        changed = bool(current.aliases) or not current.archived
        return self._require(version) if changed else current

    # -- helpers --------------------------------------------------------------------------------

    def _require(self, version: str) -> RegisteredVersion:
        found = self.get(version)
        if found is None:
            raise self._version_not_found(version)
        return found

    def _version_not_found(self, version: str) -> RegistryVersionNotFoundError:
        return RegistryVersionNotFoundError(
            f"MLflow registered model {self.name!r} at {self._public_uri()} has no version {version!r}"
        )

    def _delete_alias(self, alias: str) -> None:
        with contextlib.suppress(_NotFoundError):  # the registered model is gone: so is the alias
            self._call(
                "delete_registered_model_alias", self._store.delete_registered_model_alias, self.name, alias
            )

    def _registered(self, model_version: ModelVersion) -> RegisteredVersion:
        tags = dict(model_version.tags or {})
        version = str(model_version.version)
        return RegisteredVersion(
            version=version,
            url=f"{self._public_uri()}/#/models/{quote(self.name, safe='')}/versions/{version}",
            aliases=tuple(sorted(model_version.aliases or ())),
            archived=tags.get(ARCHIVED_TAG) == "true",
            tags=tags,
        )

    def _public_uri(self) -> str:
        """The tracking URI without any user info (it goes into status and messages)."""
        parts = urlsplit(self._uri)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
        return urlunsplit((parts.scheme, netloc, parts.path, "", ""))

    def _call(self, operation: str, method: Callable[..., T], *args: Any, exists_ok: bool = False) -> T:
        """One request: counted, and its failure turned into the interface's errors."""
        try:
            result = method(*args)
        except (_HttpStatusError, MlflowException) as error:
            if (
                isinstance(error, MlflowException)
                and exists_ok
                and error.error_code == "RESOURCE_ALREADY_EXISTS"
            ):
                count(PROVIDER, operation, "ok")  # the caller wanted the thing to exist: it does
                raise _AlreadyExistsError() from None
            self._classified(operation, error)
        count(PROVIDER, operation, "ok")
        return result

    def _classified(self, operation: str, error: _HttpStatusError | MlflowException) -> NoReturn:
        """A failed request as the interface's errors (or _NotFoundError for the caller)."""
        if isinstance(error, _HttpStatusError):
            unavailable = error.status == 429 or error.status >= 500
            self._fail(operation, "unavailable" if unavailable else "rejected", str(error), error.status)
        else:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                count(PROVIDER, operation, "notfound")
                raise _NotFoundError() from None
            transport = _transport_failure(error)
            if transport is not None:  # no answer: connection refused or reset, timeout, DNS
                self._fail(operation, "unavailable", transport, None)
            if not isinstance(error, RestException | InvalidUrlException):
                self._fail(operation, "unavailable", error.message, None)  # anything else: try again
            # A RestException's message is "<ERROR_CODE>: <the server's text>".
            self._fail(operation, "rejected", error.message, MlflowException.get_http_status_code(error))

    def _fail(self, operation: str, result: str, detail: str, status: int | None) -> NoReturn:
        where = f"MLflow registry at {self._public_uri()}"
        if result == "unavailable":
            count(PROVIDER, operation, "unavailable")
            raise RegistryUnavailableError(
                scrub(f"{where} unavailable ({operation}): {detail}; trying again later", self._credential)
            ) from None
        count(PROVIDER, operation, "rejected")
        detail = detail.rstrip(". ")
        raise RegistryRejectedError(
            scrub(
                f"{where} refused {operation} for model {self.name!r}: {detail}. {_hint(status)}",
                self._credential,
            )
        ) from None


def _hint(status: int | None) -> str:
    if status == 401:
        return "Check the token in the Secret that spec.registry.credentialsSecretRef names."
    if status == 403:
        return "The token in spec.registry.credentialsSecretRef lacks permission on this registered model."
    if status == 404:
        return "Check that spec.registry.trackingURI is the MLflow server's URL (with any path prefix)."
    return "Check spec.registry (model name, aliases) and the registry's limits."


def _metric_tags(metrics: Mapping[str, float]) -> dict[str, str]:
    return {METRIC_TAG_PREFIX + _TAG_KEY_UNSAFE.sub("_", name): repr(float(v)) for name, v in metrics.items()}


def _metric_key(name: str) -> str:
    return _METRIC_KEY_UNSAFE.sub("_", name)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _with_registry_ids(mlmodel: bytes, model_id: str, run_id: str, artifact_location: str) -> bytes:
    """MLmodel with the logged model's id, its run and its artifact location, as MLflow's own
    log_model writes them (model_uuid is the model id there too)."""
    document = yaml.safe_load(mlmodel)
    document.update(model_id=model_id, model_uuid=model_id, run_id=run_id, artifact_path=artifact_location)
    return yaml.safe_dump(document, sort_keys=True).encode()


class _SourceReadError(Exception):
    """The tenant's bucket failed while a file was streamed to the registry."""


class _SizedStream:
    """A stream with a length: requests sends it with Content-Length, in chunks, never whole."""

    def __init__(self, stream: BinaryIO, size: int, uri: str) -> None:
        self._stream, self._size, self._uri = stream, size, uri

    def __len__(self) -> int:
        return self._size

    def read(self, size: int = -1) -> bytes:
        try:
            return self._stream.read(size)
        except Exception as error:  # botocore's read timeouts and resets; never the credential
            raise _SourceReadError(f"reading {self._uri} failed midway: {type(error).__name__}") from None
