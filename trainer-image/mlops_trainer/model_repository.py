"""The `fetch-model-repository` command: a serving pod's init container materializes its Triton model
repository on local disk (an emptyDir) for tritonserver to load.

Reads `repository.json` (`mlops_contract.modelrepository`) at the repository's prefix, writes each
small file from the same prefix and downloads the engine from the URI the manifest names, checking
every sha256. A mismatch is permanent (exit 65, reason ChecksumMismatch): the object is not the one the
ModelVersion was built and evaluated from, and another attempt would fetch the same bytes. An engine
already in place with the right sha256 (an init container that restarted) is not downloaded again.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from mlops_contract import envvars
from mlops_contract.modelrepository import MANIFEST_KEY, PREFIX_DIGITS, ManifestError, RepositoryManifest

from .errors import ConfigError, DataError
from .storage import (
    LocalObjectStore,
    ObjectMissingError,
    StorageUri,
    _s3_errors,
    open_store,
    s3_client_from_env,
    sha256_hex,
)

log = logging.getLogger(__name__)
CHUNK_BYTES = 8 * 1024 * 1024


class ChecksumMismatchError(DataError):
    reason = "ChecksumMismatch"


class InvalidManifestError(DataError):
    reason = "InvalidRepositoryManifest"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _download(uri: str, target: Path) -> tuple[str, int]:
    """Stream the object at `uri` into `target` (via a temporary file beside it); its sha256 and size.

    One sequential stream, hashed as it arrives: no second read of a multi-GB engine.
    """
    parsed = StorageUri.parse(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    digest, size = hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as out:
            if parsed.scheme == "s3":
                with _s3_errors(uri):
                    body = s3_client_from_env().get_object(Bucket=parsed.bucket, Key=parsed.prefix)["Body"]
                    for chunk in body.iter_chunks(CHUNK_BYTES):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            else:
                source = Path(parsed.prefix)
                if not source.is_file():
                    raise ObjectMissingError(f"{uri}: object does not exist")
                with source.open("rb") as handle:
                    while chunk := handle.read(CHUNK_BYTES):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temp_name, target)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def _check_prefix(uri: str, manifest: RepositoryManifest) -> None:
    """A content-addressed prefix (`.../<digest[:16]>/`) must hold the manifest it is named after."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    if re.fullmatch(f"[0-9a-f]{{{PREFIX_DIGITS}}}", name) and not manifest.digest.startswith(name):
        raise ChecksumMismatchError(
            f"{uri}: the prefix names digest {name}, "
            f"but its {MANIFEST_KEY} has {manifest.digest[:PREFIX_DIGITS]}"
        )


def fetch_model_repository(repository_uri: str | None, repository_dir: str | None) -> dict[str, Any]:
    if not repository_uri or not repository_dir:
        raise ConfigError(
            f"fetch-model-repository needs {envvars.REPOSITORY_URI} and {envvars.REPOSITORY_DIR} "
            "(or --repository-uri/--repository-dir)"
        )
    source = open_store(repository_uri)
    try:
        manifest = RepositoryManifest.parse(source.read(MANIFEST_KEY))
    except ManifestError as exc:
        raise InvalidManifestError(f"{source.uri(MANIFEST_KEY)}: {exc}") from None
    _check_prefix(repository_uri, manifest)

    destination = LocalObjectStore(repository_dir)
    try:
        Path(repository_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {repository_dir}: {exc}") from None
    for entry in manifest.files:
        data = source.read(entry.path)
        found = sha256_hex(data)
        if found != entry.sha256:
            raise ChecksumMismatchError(
                f"{source.uri(entry.path)}: sha256 {found} differs from the manifest's {entry.sha256}"
            )
        destination.write_atomic(entry.path, data)

    artifact = manifest.artifact
    target = Path(repository_dir) / artifact.path
    reused = target.is_file() and _file_sha256(target) == artifact.sha256
    if not reused:
        log.info("downloading %s (%d bytes) to %s", artifact.uri, artifact.size_bytes, target)
        sha256, size = _download(artifact.uri, target)
        if sha256 != artifact.sha256:
            target.unlink(missing_ok=True)  # never leave bytes tritonserver could load
            raise ChecksumMismatchError(
                f"{artifact.uri}: sha256 {sha256} ({size} bytes) differs from the manifest's "
                f"{artifact.sha256} ({artifact.size_bytes} bytes): the engine was replaced or corrupted"
            )
    return {
        "repository": {
            "uri": repository_uri,
            "dir": str(Path(repository_dir).resolve()),
            "model": manifest.model,
            "digest": manifest.digest,
            "files": len(manifest.files),
            "engine": {
                "uri": artifact.uri,
                "path": artifact.path,
                "sha256": artifact.sha256,
                "sizeBytes": artifact.size_bytes,
                "reused": reused,
            },
        }
    }
