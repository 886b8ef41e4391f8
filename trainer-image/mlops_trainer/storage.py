"""Object storage behind one small interface: S3 (boto3) for real runs, local folders for GPU checks.

URIs are `s3://bucket/prefix/` or `file:///abs/path/` (a bare absolute path works too). Keys passed to
a store are relative to its prefix. The S3 client is configured only from the environment the
operator sets: `AWS_ENDPOINT_URL_S3` (or `AWS_ENDPOINT_URL`), `AWS_REGION` (or `AWS_DEFAULT_REGION`),
and boto3's usual credential chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN`,
or the pod's web identity).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol
from urllib.parse import urlparse

from mlops_contract import envvars

from .errors import ConfigError, DataError, StorageUnavailableError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

# Errors S3 answers for a request that will fail the same way when retried.
_PERMANENT_S3_CODES = frozenset(
    {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "NoSuchBucket", "InvalidBucketName"}
)
_MISSING_S3_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class ObjectMissingError(DataError):
    reason = "ObjectMissing"


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str = ""  # S3's, without quotes; empty for local folders


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class ObjectStore(Protocol):
    """A prefix in a bucket (or a folder). Every write of a whole object is atomic for readers."""

    def uri(self, key: str = "") -> str: ...
    def read(self, key: str) -> bytes: ...
    def write(self, key: str, data: bytes) -> None: ...
    def write_atomic(self, key: str, data: bytes) -> None: ...
    def write_new(self, key: str, data: bytes) -> bool: ...
    def exists(self, key: str) -> bool: ...
    def size(self, key: str) -> int: ...
    def list(self, prefix: str = "") -> list[ObjectInfo]: ...
    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class StorageUri:
    scheme: str  # "s3" or "file"
    bucket: str  # empty for file
    prefix: str  # no leading slash for s3; an absolute path for file

    @classmethod
    def parse(cls, text: str) -> StorageUri:
        if not text:
            raise ConfigError("empty storage URI")
        if text.startswith("/"):
            return cls("file", "", text)
        parsed = urlparse(text)
        if parsed.scheme == "s3":
            if not parsed.netloc:
                raise ConfigError(f"S3 URI without a bucket: {text!r}")
            return cls("s3", parsed.netloc, parsed.path.lstrip("/"))
        if parsed.scheme == "file":
            return cls("file", "", parsed.path)
        raise ConfigError(f"unsupported storage URI {text!r}: expected s3://bucket/prefix or file:///path")


def _join(prefix: str, key: str) -> str:
    if not prefix:
        return key
    return prefix.rstrip("/") + "/" + key.lstrip("/") if key else prefix.rstrip("/") + "/"


def s3_client_from_env() -> S3Client:
    import boto3  # noqa: PLC0415 - only S3 users pay for the import
    from botocore.config import Config  # noqa: PLC0415

    endpoint = os.environ.get(envvars.AWS_ENDPOINT_URL_S3) or os.environ.get(envvars.AWS_ENDPOINT_URL) or None
    region = os.environ.get(envvars.AWS_REGION) or os.environ.get(envvars.AWS_DEFAULT_REGION) or "us-east-1"
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        config=Config(retries={"max_attempts": 5, "mode": "standard"}),
    )


@contextmanager
def _s3_errors(uri: str) -> Iterator[None]:
    """Turn botocore failures into the trainer's failure classes (retryable or permanent)."""
    from botocore.exceptions import (  # noqa: PLC0415
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
    )

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in _MISSING_S3_CODES:
            raise ObjectMissingError(f"{uri}: object does not exist") from exc
        if code in _PERMANENT_S3_CODES:
            raise ConfigError(f"{uri}: S3 refused the request ({code})") from exc
        raise StorageUnavailableError(f"{uri}: S3 error {code or exc}") from exc
    except NoCredentialsError as exc:
        raise ConfigError(f"{uri}: no S3 credentials in the environment") from exc
    except EndpointConnectionError as exc:
        raise StorageUnavailableError(f"{uri}: cannot reach the S3 endpoint") from exc
    except BotoCoreError as exc:
        raise StorageUnavailableError(f"{uri}: {exc}") from exc


class S3ObjectStore:
    def __init__(self, bucket: str, prefix: str, client: S3Client | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else s3_client_from_env()

    def _key(self, key: str) -> str:
        return _join(self.prefix, key)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{_join(self.prefix, key)}"

    def read(self, key: str) -> bytes:
        with _s3_errors(self.uri(key)):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def write(self, key: str, data: bytes) -> None:
        with _s3_errors(self.uri(key)):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def write_atomic(self, key: str, data: bytes) -> None:
        """Upload under a temporary key, check its size, then copy it to `key`.

        One S3 PUT is already all-or-nothing; the temporary key keeps a multipart upload that dies
        half-way, or bytes that arrived short, from ever being visible under the final name.
        """
        temp_key = _join(self.prefix, f"_tmp/{key.replace('/', '_')}.{uuid.uuid4().hex}")
        with _s3_errors(self.uri(key)):
            # The managed upload switches to multipart for large checkpoints.
            self.client.upload_fileobj(io.BytesIO(data), self.bucket, temp_key)
            try:
                uploaded = self.client.head_object(Bucket=self.bucket, Key=temp_key)["ContentLength"]
                if uploaded != len(data):
                    raise StorageUnavailableError(
                        f"{self.uri(key)}: uploaded {uploaded} of {len(data)} bytes"
                    )
                self.client.copy({"Bucket": self.bucket, "Key": temp_key}, self.bucket, self._key(key))
            finally:
                self.client.delete_object(Bucket=self.bucket, Key=temp_key)

    def write_new(self, key: str, data: bytes) -> bool:
        """Write `key` only when no object has that name (one conditional PUT, `If-None-Match: *`).

        Returns False, leaving the existing object as it is, when one was there first. A store that
        ignores the condition (older S3-compatible servers) overwrites: callers write content that is
        deterministic, so a lost race there replaces it with the same bytes.
        """
        from botocore.exceptions import ClientError  # noqa: PLC0415

        with _s3_errors(self.uri(key)):
            try:
                self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, IfNoneMatch="*")
            except ClientError as exc:
                # 412: the object exists; 409: a concurrent conditional write to it is in progress.
                if str(exc.response.get("Error", {}).get("Code", "")) in {
                    "PreconditionFailed",
                    "ConditionalRequestConflict",
                }:
                    return False
                raise
        return True

    def exists(self, key: str) -> bool:
        try:
            self.size(key)
        except ObjectMissingError:
            return False
        return True

    def size(self, key: str) -> int:
        with _s3_errors(self.uri(key)):
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        base = _join(self.prefix, "")
        found: list[ObjectInfo] = []
        with _s3_errors(self.uri(prefix)):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=_join(self.prefix, prefix) if prefix else base
            )
            for page in pages:
                for item in page.get("Contents", []):
                    key, etag = item["Key"][len(base) :], str(item.get("ETag", "")).strip('"')
                    found.append(ObjectInfo(key, int(item["Size"]), etag))
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        with _s3_errors(self.uri(key)):
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))


class LocalObjectStore:
    """A folder standing in for a bucket prefix (GPU checks, local runs)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root.resolve() not in (path, *path.parents):
            raise ConfigError(f"key {key!r} escapes {self.root}")
        return path

    def uri(self, key: str = "") -> str:
        return f"file://{self._path(key) if key else self.root.resolve()}"

    def read(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError as exc:
            raise ObjectMissingError(f"{self.uri(key)}: object does not exist") from exc

    def write(self, key: str, data: bytes) -> None:
        self.write_atomic(key, data)

    def write_atomic(self, key: str, data: bytes) -> None:
        """Write a temporary file in the same folder, fsync it, then rename it over the target."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp_name, path)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise

    def write_new(self, key: str, data: bytes) -> bool:
        """Write a temporary file, then hard-link it to `key`: the link fails when `key` exists."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.link(temp_name, path)
        except FileExistsError:
            return False
        finally:
            Path(temp_name).unlink(missing_ok=True)
        return True

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        try:
            return self._path(key).stat().st_size
        except FileNotFoundError as exc:
            raise ObjectMissingError(f"{self.uri(key)}: object does not exist") from exc

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        if not self.root.is_dir():
            return []
        found = [
            ObjectInfo(path.relative_to(self.root).as_posix(), path.stat().st_size)
            for path in self.root.rglob("*")
            if path.is_file() and not path.name.startswith(".")
        ]
        return sorted((info for info in found if info.key.startswith(prefix)), key=lambda info: info.key)

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)


def open_store(uri: str, client: S3Client | None = None) -> ObjectStore:
    parsed = StorageUri.parse(uri)
    if parsed.scheme == "s3":
        return S3ObjectStore(parsed.bucket, parsed.prefix, client)
    return LocalObjectStore(parsed.prefix)
