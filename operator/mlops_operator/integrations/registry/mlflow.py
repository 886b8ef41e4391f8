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
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

import requests
from mlflow.entities.model_registry import ModelVersion, ModelVersionTag
from mlflow.exceptions import InvalidUrlException, MlflowException, RestException
from mlflow.store.model_registry.rest_store import RestStore
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


class _HttpStatusError(Exception):
    """A response that is neither a success nor an MLflow error document."""

    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class _NotFoundError(Exception):
    """RESOURCE_DOES_NOT_EXIST, handled by the caller."""


class _AlreadyExistsError(Exception):
    """RESOURCE_ALREADY_EXISTS, handled by the caller."""


class _OneAttemptRestStore(RestStore):
    """mlflow's REST store, one attempt per request within `timeout_seconds`."""

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
        body = json.loads(json_body) if json_body is not None else None
        response: requests.Response = http_request(
            self.get_host_creds(),
            endpoint,
            method,
            max_retries=0,
            backoff_factor=0,
            timeout=self._timeout_seconds,
            raise_on_status=False,  # a 5xx comes back as a response, classified below
            extra_headers=extra_headers,
            **({"params": body} if method == "GET" else {"json": body}),
        )
        status = response.status_code
        if status in (200, 204):
            proto = self._get_response_from_method(api)  # type: ignore[no-untyped-call]
            if status == 200:
                parse_dict(response.json(), proto)
            return proto
        if status != 429 and status < 500:
            try:
                document = response.json()
            except ValueError:
                document = None
            if isinstance(document, dict) and "error_code" in document:
                raise RestException(document)
        raise _HttpStatusError(status, response.text)


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
        self._store = _OneAttemptRestStore(
            MlflowHostCreds(self._uri, token=target.credential or None), timeout_seconds
        )

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
        tags = {**request.tags, **_metric_tags(request.metrics), UID_TAG: request.uid}
        version_tags = [ModelVersionTag(key, value) for key, value in tags.items()]

        def create() -> ModelVersion:
            created: ModelVersion = self._call(
                "create_model_version",
                self._store.create_model_version,
                self.name,
                request.source_uri,
                None,  # run_id: the artifact was not logged by an MLflow run
                version_tags,
                None,  # run_link
                request.description or None,
            )
            return created

        # The registered model usually exists: create the version first, the model only when the
        # registry says it is missing.
        try:
            created = create()
        except _NotFoundError:
            with contextlib.suppress(_AlreadyExistsError):  # created meanwhile: what was wanted
                self._call(
                    "create_registered_model", self._store.create_registered_model, self.name, exists_ok=True
                )
            try:
                created = create()
            except _NotFoundError:  # the model was deleted again meanwhile
                raise RegistryUnavailableError(
                    f"MLflow registered model {self.name!r} vanished while registering; trying again later"
                ) from None
        return self._registered(created)

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
        except _HttpStatusError as error:
            unavailable = error.status == 429 or error.status >= 500
            self._fail(operation, "unavailable" if unavailable else "rejected", str(error), error.status)
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                count(PROVIDER, operation, "notfound")
                raise _NotFoundError() from None
            if exists_ok and error.error_code == "RESOURCE_ALREADY_EXISTS":
                count(PROVIDER, operation, "ok")  # the caller wanted the thing to exist: it does
                raise _AlreadyExistsError() from None
            transport = _transport_failure(error)
            if transport is not None:  # no answer: connection refused or reset, timeout, DNS
                self._fail(operation, "unavailable", transport, None)
            if not isinstance(error, RestException | InvalidUrlException):
                self._fail(operation, "unavailable", error.message, None)  # anything else: try again
            # A RestException's message is "<ERROR_CODE>: <the server's text>".
            self._fail(operation, "rejected", error.message, MlflowException.get_http_status_code(error))
        count(PROVIDER, operation, "ok")
        return result

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
