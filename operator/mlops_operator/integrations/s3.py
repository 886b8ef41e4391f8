"""S3 access behind a small interface: list a prefix, read small objects, write objects (large ones
as a stream).

boto3 is synchronous: callers run in kopf's thread pool (sync handlers), never on the event loop.
Errors come back as `S3UnavailableError` with a message a person can act on and no credential in it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # without leading slash; empty or ending in "/"

    @classmethod
    def parse(cls, uri: str) -> S3Location:
        if not uri.startswith("s3://"):
            raise ValueError(f"not an s3:// URI: {uri}")
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if key and not key.endswith("/"):
            key += "/"
        return cls(bucket, key)

    def uri(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"


def split_object_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/path/to/object -> (bucket, path/to/object)."""
    if not uri.startswith("s3://"):
        raise ValueError(f"not an s3:// URI: {uri}")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


@dataclass(frozen=True)
class S3Credentials:
    access_key_id: str
    secret_access_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never print the secret, not even in a traceback
        return "S3Credentials(***)"


@dataclass(frozen=True)
class S3Config:
    endpoint_url: str | None = None
    region: str | None = None
    credentials: S3Credentials | None = None


class S3UnavailableError(Exception):
    """The bucket cannot be read: missing, denied, unreachable. `reason` is one CamelCase word."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ObjectTooLargeError(Exception):
    """An object is larger than the caller will read; nothing past its size was downloaded."""

    def __init__(self, uri: str, size: int, limit: int) -> None:
        super().__init__(f"{uri} is {size} bytes, over the limit of {limit} bytes")
        self.uri, self.size, self.limit = uri, size, limit


class ObjectStore(Protocol):
    def list_objects(self, location: S3Location) -> Iterator[ObjectInfo]: ...

    def get_bytes(self, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
        """The object's bytes; `ObjectTooLargeError` when it is larger than `max_bytes`."""
        ...

    def iter_lines(self, bucket: str, key: str, *, max_bytes: int) -> Iterator[bytes]:
        """The object's lines (without their newline) as they download, in bounded memory;
        `ObjectTooLargeError` when it is larger than `max_bytes` (before any line, when its size
        says so), `S3UnavailableError` when it cannot be read, also midway."""
        ...

    def open_object(self, bucket: str, key: str) -> tuple[BinaryIO, int]:
        """The object as a stream to copy elsewhere without holding it (the caller closes it), and
        its length; `S3UnavailableError` when it cannot be opened (reason ObjectNotFound: gone)."""
        ...

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None: ...

    def put_stream(self, bucket: str, key: str, chunks: Iterable[bytes], content_type: str) -> None:
        """Write the concatenated `chunks` as one object, holding about one part in memory (a
        multipart upload past the first part); an exception from `chunks` aborts it, and leaves
        no object behind."""
        ...

    def exists(self, bucket: str, key: str) -> bool: ...


_REASONS = {
    "NoSuchBucket": "BucketNotFound",
    "AccessDenied": "AccessDenied",
    "InvalidAccessKeyId": "InvalidCredentials",
    "SignatureDoesNotMatch": "InvalidCredentials",
    "ExpiredToken": "InvalidCredentials",
    "NoSuchKey": "ObjectNotFound",
}


def _unavailable(error: Exception, what: str) -> S3UnavailableError:
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", "Unknown"))
        return S3UnavailableError(_REASONS.get(code, "S3Error"), f"{what}: {code}")
    # BotoCoreError messages name the endpoint, never the credentials.
    return S3UnavailableError("EndpointUnreachable", f"{what}: {type(error).__name__}: {error}")


# Chunks of a streamed download.
LINE_CHUNK_BYTES = 256 * 1024
# Parts of a streamed upload: S3 wants at least 5 MiB for every part but the last.
PART_BYTES = 8 * 1024 * 1024


def _parts(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """`chunks` regrouped into parts of at least `size` bytes (the last one may be smaller)."""
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if len(buffer) >= size:
            yield bytes(buffer)
            buffer.clear()
    if buffer:
        yield bytes(buffer)


class Boto3ObjectStore:
    """`ObjectStore` over a boto3 client, with the caller's explicit credentials only.

    Never the default credential chain: the operator's own identity (env vars, its IRSA token, the
    instance profile) would let a tenant read any bucket the operator can reach (a confused
    deputy). Without credentials there is no client.
    """

    def __init__(self, config: S3Config) -> None:
        creds = config.credentials
        if creds is None or not creds.access_key_id or not creds.secret_access_key:
            raise S3UnavailableError(
                "CredentialsRequired",
                "no S3 credentials given; the operator never uses its own identity to read a bucket",
            )
        self._client: Any = boto3.client(
            "s3",
            endpoint_url=config.endpoint_url,
            region_name=config.region or "us-east-1",
            aws_access_key_id=creds.access_key_id,
            aws_secret_access_key=creds.secret_access_key,
            aws_session_token=creds.session_token or None,
            config=Config(
                connect_timeout=5, read_timeout=20, retries={"max_attempts": 2, "mode": "standard"}
            ),
        )

    def list_objects(self, location: S3Location) -> Iterator[ObjectInfo]:
        try:
            paginator = self._client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=location.bucket, Prefix=location.prefix):
                for item in page.get("Contents", []):
                    yield ObjectInfo(
                        str(item["Key"]), int(item["Size"]), str(item.get("ETag", "")).strip('"')
                    )
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(error, f"cannot list {location.uri(location.prefix)}") from None

    def get_bytes(self, bucket: str, key: str, *, max_bytes: int | None = None) -> bytes:
        uri = f"s3://{bucket}/{key}"
        try:
            if max_bytes is None:
                return bytes(self._client.get_object(Bucket=bucket, Key=key)["Body"].read())
            # Its size first (HEAD), then at most one byte more than the limit: an object that grew
            # in between is still refused, and never read whole.
            size = int(self._client.head_object(Bucket=bucket, Key=key)["ContentLength"])
            if size > max_bytes:
                raise ObjectTooLargeError(uri, size, max_bytes)
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                data = bytes(body.read(max_bytes + 1))
            finally:
                body.close()
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in {"404", "NotFound"}:  # a HEAD's 404
                raise S3UnavailableError("ObjectNotFound", f"cannot read {uri}: NoSuchKey") from None
            raise _unavailable(error, f"cannot read {uri}") from None
        except BotoCoreError as error:
            raise _unavailable(error, f"cannot read {uri}") from None
        if len(data) > max_bytes:
            raise ObjectTooLargeError(uri, len(data), max_bytes)
        return data

    def iter_lines(self, bucket: str, key: str, *, max_bytes: int) -> Iterator[bytes]:
        uri = f"s3://{bucket}/{key}"
        read = 0
        pending = b""
        try:
            size = int(self._client.head_object(Bucket=bucket, Key=key)["ContentLength"])
            if size > max_bytes:
                raise ObjectTooLargeError(uri, size, max_bytes)
            body = self._client.get_object(Bucket=bucket, Key=key)["Body"]
            try:
                for chunk in body.iter_chunks(LINE_CHUNK_BYTES):
                    read += len(chunk)
                    if read > max_bytes:  # grew since the HEAD: never read whole
                        raise ObjectTooLargeError(uri, read, max_bytes)
                    *lines, pending = (pending + chunk).split(b"\n")
                    yield from lines
            finally:
                body.close()
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in {"404", "NotFound"}:  # a HEAD's 404
                raise S3UnavailableError("ObjectNotFound", f"cannot read {uri}: NoSuchKey") from None
            raise _unavailable(error, f"cannot read {uri}") from None
        except BotoCoreError as error:
            raise _unavailable(error, f"cannot read {uri}") from None
        if pending:
            yield pending

    def open_object(self, bucket: str, key: str) -> tuple[BinaryIO, int]:
        uri = f"s3://{bucket}/{key}"
        try:
            response = self._client.get_object(Bucket=bucket, Key=key)
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(error, f"cannot read {uri}") from None
        body: BinaryIO = response["Body"]
        return body, int(response["ContentLength"])

    def put_bytes(self, bucket: str, key: str, data: bytes, content_type: str) -> None:
        try:
            self._client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(error, f"cannot write s3://{bucket}/{key}") from None

    def put_stream(self, bucket: str, key: str, chunks: Iterable[bytes], content_type: str) -> None:
        uri = f"s3://{bucket}/{key}"
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            for part in _parts(chunks, PART_BYTES):
                if upload_id is None and len(part) < PART_BYTES:  # all of it in one part: one PUT
                    self._client.put_object(Bucket=bucket, Key=key, Body=part, ContentType=content_type)
                    return
                if upload_id is None:
                    created = self._client.create_multipart_upload(
                        Bucket=bucket, Key=key, ContentType=content_type
                    )
                    upload_id = str(created["UploadId"])
                number = len(parts) + 1
                sent = self._client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number, Body=part
                )
                parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            if upload_id is None:  # no bytes at all
                self._client.put_object(Bucket=bucket, Key=key, Body=b"", ContentType=content_type)
                return
            self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            upload_id = None
        except (ClientError, BotoCoreError) as error:
            raise _unavailable(error, f"cannot write {uri}") from None
        finally:
            if upload_id is not None:  # failed or aborted by the caller: no half object, no parts kept
                # A part left behind when even this fails: a bucket lifecycle rule is the last resort.
                with contextlib.suppress(ClientError, BotoCoreError):
                    self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)

    def exists(self, bucket: str, key: str) -> bool:
        try:
            self._client.head_object(Bucket=bucket, Key=key)
        except ClientError as error:
            if str(error.response.get("Error", {}).get("Code")) in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise _unavailable(error, f"cannot read s3://{bucket}/{key}") from None
        except BotoCoreError as error:
            raise _unavailable(error, f"cannot read s3://{bucket}/{key}") from None
        return True
