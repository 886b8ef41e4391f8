"""W&B Registry through the `wandb` SDK (the optional `wandb` extra, imported when first used).

A version is an artifact of type "model" named `target.model_name`, logged by a short run in
`target.entity/target.project` (named `request.run_name`, its config `request.params`), then linked
to the registry collection `wandb-registry-model/<model_name>` (W&B 0.31's Registry; the SDK finds
the organization of `target.entity`). The artifact holds the model package (`request.files`, the
MLflow Model layout): the small files the operator built (`MLmodel`, `input_example.json`…) are
written to the registration's scratch directory and uploaded to W&B; the large ones stay in the
tenant's bucket and are references (`add_reference(uri, checksum=False)`: W&B records the URI as the
entry's digest and neither reads nor lists the object, so the operator needs no access to the
bucket). A package without files is a single reference to `request.source_uri`. The artifact's
metadata is `request.metadata` (lineage, engine with the GPU product and compute capability,
signature) with the lineage tags, the uid (UID_TAG) and the evaluation metrics (`metrics`).

Downloading a version (`wandb.Api().artifact("<entity>/<project>/<name>:<alias>").download()`)
fetches the uploaded files from W&B and the referenced ones from the bucket: the downloader needs
the W&B key and the S3 credentials for the referenced objects (boto3's usual sources, e.g.
AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, and AWS_S3_ENDPOINT_URL for MinIO or another S3 service).
With checksum off W&B downloads whatever the URI holds then, unverified.

Alias `uid-<ModelVersion uid>` marks the version in the project collection and in the registry
collection: an alias is unique within a collection, so it is the idempotency key. W&B's own
aliases (`latest`, `uid-…`) are left out of `RegisteredVersion.aliases`.

Credentials: lookups and alias moves use a `wandb.Api(api_key=…)` of this object, which keeps the
key to itself. `wandb.init(settings=Settings(api_key=…))` does not write the key to disk or to the
environment either (an explicit key is never saved to .netrc), but it makes the key the SDK's
process-wide session credential (`wbauth.use_explicit_auth`). So registrations, the only runs,
take `_RUN_LOCK`: one at a time, each with its own tenant's key.

One tenant's slow W&B must not hold the operator's shared reconcile workers: a registration runs on
`_RUNNER`, a thread of its own, and holds the lock there. A worker waits for it at most
`register_timeout_seconds`, then reports the registry unavailable (the reconcile retries later, and
the registration, still going, is found by its uid alias); a worker that finds the lock taken by
another registration does not queue behind it: it reports the registry busy at once
(`RegistryBusyError`, an unavailability: retried with backoff). The check for an earlier
registration of the same uid runs under the lock too, so a retry never logs a second version while
the first is still being logged.

Offline (`offline_dir`, for tests, not reachable from the CRD): `register` logs the artifact in an
offline run under that directory and links nothing (the SDK cannot link offline); every other call
needs a server and raises NotImplementedError. The package's files stay under
`<offline_dir>/packages/<uid>` (a later `wandb sync` uploads them from there). The run's transaction
log (run-<id>.wandb) is complete only once wandb-core has closed the run's stream: `Run.finish`
sends that close without waiting for it, and wandb-core keeps the log's last block in memory until
then, so a reader of the file calls `wandb.teardown()` first (which closes every stream, in order).
"""

from __future__ import annotations

import math
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TypeVar

from .base import (
    ARCHIVED_TAG,
    UID_ALIAS_PREFIX,
    UID_TAG,
    RegisteredVersion,
    RegistryBusyError,
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

if TYPE_CHECKING:
    import wandb
    from wandb.sdk.artifacts.artifact import Artifact

PROVIDER = "wandb"
REGISTRY_PROJECT = "wandb-registry-model"
ARTIFACT_TYPE = "model"
# The artifact metadata key of the evaluation metrics ({name: value}).
METRICS_KEY = "metrics"
# Aliases W&B manages or the operator owns: never reported, never moved by set_aliases or archive.
_LATEST = "latest"
_RUN_LOCK = threading.Lock()
# Where registrations run, one at a time, off the reconcile workers.
_RUNNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="wandb-register")
# Operations of one registration, each bounded by the call timeout: what a worker waits for at most.
REGISTER_CALLS = 6
T = TypeVar("T")


class _NotFoundError(Exception):
    """The artifact, version or project does not exist; handled by the caller."""


def uid_alias(uid: str) -> str:
    return UID_ALIAS_PREFIX + check_uid(uid)


def _internal(alias: str) -> bool:
    return alias == _LATEST or alias.startswith(UID_ALIAS_PREFIX)


def classify(error: BaseException) -> Literal["notfound", "rejected", "unavailable"]:
    """What a wandb exception means for the caller: notfound, rejected or unavailable."""
    import wandb.errors  # noqa: PLC0415

    message = str(error).lower()
    if isinstance(error, ValueError) and "not found" in message:
        return "notfound"  # Artifact._from_name: "project … not found", "artifact membership … not found"
    if isinstance(error, wandb.errors.AuthenticationError) and error.__cause__ is not None:
        # The key check of `wandb.Api`/`wandb.login`: a server that answered (401, 403) rejects it;
        # no answer (wandb-core busy or not running, a timeout) is an outage, not a bad key.
        return "rejected" if _http_status(error.__cause__) else "unavailable"
    if isinstance(error, wandb.errors.AuthenticationError | wandb.errors.UsageError):
        return "rejected"
    if isinstance(error, wandb.errors.CommError):
        status = _http_status(error.exc)
        if status == 404 or (status in (0, 200) and "not found" in message):
            return "notfound"
        if status == 0:
            return "unavailable"  # no HTTP answer: connection, DNS, timeout in wandb-core
        if status == 429 or status >= 500:
            return "unavailable"
        return "rejected"  # 4xx, or a GraphQL error in a 200 answer
    if isinstance(error, TimeoutError | ConnectionError):
        return "unavailable"
    if isinstance(error, ValueError):
        return "rejected"  # the SDK's validation of names and aliases
    return "unavailable"


def _http_status(cause: BaseException | None) -> int:
    """The HTTP status behind a CommError: wandb-core's error response, or a requests error's."""
    response = getattr(cause, "response", None)
    status = getattr(response, "http_status", None)  # WandbApiFailedError.response: ApiErrorResponse
    if status is None:
        status = getattr(response, "status_code", None)  # requests.HTTPError.response
    return int(status or 0)


class WandbRegistry:
    provider = PROVIDER

    def __init__(
        self,
        target: RegistryTarget,
        *,
        timeout_seconds: float = 10.0,
        offline_dir: Path | None = None,
        register_timeout_seconds: float | None = None,
    ) -> None:
        self.target = target
        self.name = target.model_name
        self._credential = target.credential
        self._timeout_seconds = timeout_seconds
        self._offline_dir = offline_dir
        self._register_timeout_seconds = (
            register_timeout_seconds
            if register_timeout_seconds is not None
            else REGISTER_CALLS * max(1.0, timeout_seconds)
        )
        self._api: wandb.Api | None = None

    # -- the interface --------------------------------------------------------------------------

    def find(self, uid: str) -> RegisteredVersion | None:
        self._online_only("find")
        try:
            path = self._registry_path(uid_alias(uid))
            linked = self._call("get_artifact", self._client().artifact, path, lookup=True)
        except _NotFoundError:
            return None
        return self._registered(linked)

    def get(self, version: str) -> RegisteredVersion | None:
        self._online_only("get")
        linked = self._fetch(version)
        return self._registered(linked) if linked is not None else None

    def register(self, request: VersionRequest) -> RegisteredVersion:
        alias = uid_alias(request.uid)
        self._require_credential()
        return self._exclusive(lambda: self._register(request, alias))

    def _register(self, request: VersionRequest, alias: str) -> RegisteredVersion:
        """Under `_RUN_LOCK`, on `_RUNNER`."""
        if self._offline_dir is not None:
            self._log(request, alias)
            return RegisteredVersion(
                version="offline", url=None, aliases=(), tags=self._metadata_tags(request)
            )
        existing = self.find(request.uid)
        if existing is not None:
            return existing
        # Logged by an earlier attempt whose link failed: link that one rather than log another.
        try:
            path = self._project_path(alias)
            source = self._call("get_artifact", self._client().artifact, path, lookup=True)
        except _NotFoundError:
            source = None
        if source is not None:
            linked = self._call("link_artifact", source.link, self._registry_path(), [alias])
        else:
            linked = self._log(request, alias)
        return self._registered(linked)

    def set_aliases(self, version: str, add: Sequence[str], remove: Sequence[str]) -> RegisteredVersion:
        self._online_only("set_aliases")
        check_aliases(add, remove)
        linked = self._require(version)
        current = set(linked.aliases)
        wanted = (current | set(add)) - set(remove)
        if wanted != current:
            # Adding an alias that is on another version of the collection moves it here (W&B keeps
            # an alias unique within a collection); removing only touches this version's aliases.
            linked.aliases = sorted(wanted)
            self._save(linked, version)
        return self._registered(linked)

    def archive(self, version: str) -> RegisteredVersion:
        self._online_only("archive")
        linked = self._require(version)
        keep = sorted(a for a in linked.aliases if _internal(a))  # the uid alias stays: find() needs it
        if keep != sorted(linked.aliases) or linked.metadata.get(ARCHIVED_TAG) != "true":
            linked.aliases = keep
            # Metadata of a linked version is its source artifact's (W&B edits both).
            linked.metadata = {**linked.metadata, ARCHIVED_TAG: "true"}
            self._save(linked, version)
        return self._registered(linked)

    # -- helpers --------------------------------------------------------------------------------

    def _log(self, request: VersionRequest, alias: str) -> Artifact:
        """Log the model artifact in a short run and (online) link it to the registry collection."""
        import wandb  # noqa: PLC0415

        artifact = wandb.Artifact(
            self.name,
            type=ARTIFACT_TYPE,
            description=request.description or None,
            metadata=self._artifact_metadata(request),
        )
        with self._scratch(request) as scratch:
            self._add_package(artifact, request, scratch)
            run = self._call("init_run", wandb.init, **self._init_kwargs(request, scratch))
            try:
                self._call("log_artifact", run.log_artifact, artifact, aliases=[alias])
                if self._offline_dir is not None:
                    return artifact
                self._call("wait_artifact", artifact.wait, math.ceil(self._timeout_seconds))
                linked: Artifact = self._call(
                    "link_artifact", run.link_artifact, artifact, self._registry_path(), [alias]
                )
                return linked
            finally:
                # Online, finish waits for the uploads of the package's files (read from `scratch`).
                self._call("finish_run", run.finish)

    @contextmanager
    def _scratch(self, request: VersionRequest) -> Iterator[Path]:
        """The registration's scratch directory: the run's files and the package's built files.
        Online it goes when the registration ends; offline the files stay for a later sync."""
        if self._offline_dir is not None:
            kept = self._offline_dir / "packages" / check_uid(request.uid)
            kept.mkdir(parents=True, exist_ok=True)
            yield kept
            return
        with tempfile.TemporaryDirectory(prefix="mlops-wandb-") as scratch:
            yield Path(scratch)

    @staticmethod
    def _add_package(artifact: Artifact, request: VersionRequest, scratch: Path) -> None:
        """The package's files into `artifact`: built ones uploaded, bucket ones as references."""
        if not request.files:
            # checksum=False: record the URI only; W&B would otherwise list the bucket with its own
            # credentials to checksum the object.
            artifact.add_reference(request.source_uri, name=Path(request.source_uri).name, checksum=False)
            return
        files = scratch / "package"
        for package_file in request.files:
            name = _package_path(package_file.path)
            if (package_file.content is None) == (package_file.uri is None):
                raise RegistryRejectedError(
                    f"package file {package_file.path!r} needs either its content or a URI"
                )
            if package_file.uri is not None:
                entries = artifact.add_reference(package_file.uri, name=name, checksum=False)
                if package_file.size_bytes is not None:
                    for entry in entries:
                        entry.size = package_file.size_bytes
                continue
            assert package_file.content is not None
            local = files / name
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(package_file.content)
            # immutable: no copy to W&B's staging directory (the file stays until the run has
            # finished uploading it); skip_cache: the operator keeps no cache of what it registers.
            artifact.add_file(str(local), name=name, policy="immutable", skip_cache=True)

    def _exclusive(self, work: Callable[[], T]) -> T:
        """`work` on `_RUNNER` under `_RUN_LOCK`, waited for at most `register_timeout_seconds`;
        `RegistryBusyError` at once when another registration holds the lock."""
        if not _RUN_LOCK.acquire(blocking=False):
            count(PROVIDER, "register", "unavailable")
            raise RegistryBusyError(
                f"W&B registration of model {self.name!r} waits: another registration holds the W&B "
                "session of the operator; trying again shortly"
            )

        def locked() -> T:
            try:
                return work()
            finally:
                _RUN_LOCK.release()

        try:
            future = _RUNNER.submit(locked)
        except BaseException:
            _RUN_LOCK.release()
            raise
        try:
            return future.result(timeout=self._register_timeout_seconds)
        except FutureTimeoutError:
            count(PROVIDER, "register", "unavailable")
            raise RegistryUnavailableError(
                f"W&B registration of model {self.name!r} did not finish within "
                f"{self._register_timeout_seconds:g}s; it goes on in the background and is looked for "
                "again later"
            ) from None

    def _init_kwargs(self, request: VersionRequest, scratch: Path) -> dict[str, Any]:
        import wandb  # noqa: PLC0415

        offline = self._offline_dir is not None
        timeout = max(1, math.ceil(self._timeout_seconds))
        settings = wandb.Settings(
            api_key=self._credential,
            silent=True,
            console="off",
            save_code=False,
            disable_git=True,
            disable_job_creation=True,
            x_disable_stats=True,
            x_disable_meta=True,
            x_save_requirements=False,
            init_timeout=timeout,
            # One attempt per request, as for every registry call: the operator retries later.
            x_graphql_retry_max=0,
            x_graphql_timeout_seconds=timeout,
            **({"base_url": self.target.tracking_uri} if self.target.tracking_uri else {}),
        )
        return {
            "entity": self.target.entity,
            "project": self.target.project,
            "job_type": "register-model",
            "name": request.run_name or f"register-{self.name}-{request.uid[:8]}",
            "config": dict(request.params),
            "mode": "offline" if offline else "online",
            "dir": str(self._offline_dir if offline else scratch),
            "reinit": "create_new",
            "settings": settings,
        }

    def _client(self) -> wandb.Api:
        if self._api is None:
            import wandb  # noqa: PLC0415

            overrides: dict[str, Any] = {"project": self.target.project}
            if self.target.entity:
                overrides["entity"] = self.target.entity
            if self.target.tracking_uri:
                overrides["base_url"] = self.target.tracking_uri
            self._require_credential()
            # The constructor checks the key with the server: a request of its own.
            self._api = self._call(
                "login",
                wandb.Api,
                overrides=overrides,
                timeout=max(1, math.ceil(self._timeout_seconds)),
                api_key=self._credential,
            )
        return self._api

    def _fetch(self, version: str) -> Artifact | None:
        """The version in the registry collection, or None."""
        if not (version.startswith("v") and version[1:].isdigit()):
            return None  # not a W&B version ("3" is an MLflow one): no such version here
        try:
            path = self._registry_path(version)
            linked: Artifact = self._call("get_artifact", self._client().artifact, path, lookup=True)
        except _NotFoundError:
            return None
        return linked

    def _save(self, linked: Artifact, version: str) -> None:
        try:
            self._call("save_artifact", linked.save, lookup=True)
        except _NotFoundError:
            raise self._version_not_found(version) from None

    def _version_not_found(self, version: str) -> RegistryVersionNotFoundError:
        return RegistryVersionNotFoundError(
            f"W&B registry collection {self._registry_path()!r} has no version {version!r}"
        )

    def _require(self, version: str) -> Artifact:
        linked = self._fetch(version)
        if linked is None:
            raise self._version_not_found(version)
        return linked

    def _registry_path(self, version_or_alias: str | None = None) -> str:
        path = f"{REGISTRY_PROJECT}/{self.name}"
        return f"{path}:{version_or_alias}" if version_or_alias else path

    def _project_path(self, version_or_alias: str) -> str:
        prefix = f"{self.target.entity}/" if self.target.entity else ""
        return f"{prefix}{self.target.project}/{self.name}:{version_or_alias}"

    def _registered(self, linked: Artifact) -> RegisteredVersion:
        metadata: Mapping[str, Any] = linked.metadata or {}
        return RegisteredVersion(
            version=linked.version,
            url=linked.url or None,
            aliases=tuple(sorted(a for a in linked.aliases if not _internal(a))),
            archived=metadata.get(ARCHIVED_TAG) == "true",
            tags={k: v for k, v in metadata.items() if isinstance(v, str)},
        )

    @staticmethod
    def _metadata_tags(request: VersionRequest) -> dict[str, str]:
        return {**request.tags, UID_TAG: request.uid}

    def _artifact_metadata(self, request: VersionRequest) -> dict[str, Any]:
        """`request.metadata`, the lineage tags and the uid (flat: what `_registered` reads back as
        tags), and the evaluation metrics under METRICS_KEY."""
        given = request.metadata.get(METRICS_KEY)
        metrics = {
            **(dict(given) if isinstance(given, Mapping) else {}),
            **{name: float(value) for name, value in request.metrics.items()},
        }
        return {**request.metadata, **self._metadata_tags(request), METRICS_KEY: metrics}

    def _require_credential(self) -> None:
        if not self._credential:
            # Never fall back to whatever key the SDK finds (another tenant's session, a .netrc).
            raise RegistryRejectedError(
                "W&B needs an API key: set spec.registry.credentialsSecretRef to a Secret key holding it"
            )

    def _online_only(self, operation: str) -> None:
        if self._offline_dir is not None:
            raise NotImplementedError(f"W&B {operation} needs a W&B server; this provider is offline")

    def _call(
        self, operation: str, method: Callable[..., T], *args: Any, lookup: bool = False, **kwargs: Any
    ) -> T:
        """One SDK call: counted, and its failure turned into the interface's errors. "Not found"
        is `_NotFoundError` for a lookup (the caller handles it), a refusal otherwise (a missing
        entity or project when logging: a person has to fix the spec)."""
        try:
            result = method(*args, **kwargs)
        except RegistryRejectedError:
            raise
        except Exception as error:
            result_kind = classify(error)
            count(PROVIDER, operation, result_kind)
            if result_kind == "notfound" and lookup:
                raise _NotFoundError() from None
            detail = f"{type(error).__name__}: {error}"
            self._fail(operation, "rejected" if result_kind == "notfound" else result_kind, detail)
        count(PROVIDER, operation, "ok")
        return result

    def _fail(self, operation: str, result: str, detail: str) -> NoReturn:
        project = f"{self.target.entity}/{self.target.project}" if self.target.entity else self.target.project
        where = f"W&B ({self.target.tracking_uri or 'default server'}, project {project})"
        if result == "unavailable":
            raise RegistryUnavailableError(
                scrub(f"{where} unavailable ({operation}): {detail}; trying again later", self._credential)
            ) from None
        raise RegistryRejectedError(
            scrub(
                f"{where} refused {operation} for model {self.name!r}: {detail}. Check the API key in "
                "spec.registry.credentialsSecretRef, its access to the entity and project, and the names",
                self._credential,
            )
        ) from None


def _package_path(path: str) -> str:
    """`path` as a relative path inside the artifact; anything that could leave the scratch
    directory is refused."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or any(part in ("", ".", "..") for part in path.split("/")):
        raise RegistryRejectedError(f"package file path {path!r} is not a relative path inside the package")
    return str(pure)
