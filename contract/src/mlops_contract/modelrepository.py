"""A Triton model repository as the operator publishes it and a serving pod's init container fetches it.

The operator writes, under one content-addressed prefix (`<base>/triton/<model>/<digest[:16]>/`):

    <model>/config.pbtxt, <model>/<version>/model.py ...   the small files, at their repository paths
    repository.json                                         this manifest, written last

`<version>` is Triton's version number of the one model version a repository holds (a positive
integer: Triton ignores a version folder named 0 or starting with 0); the operator uses the
ModelVersion's serving version, so a response's `model_version` and the `version` label of Triton's
metrics name the registry's version.

and never copies the engine: the manifest names it by URI and sha256. `mlops-trainer
fetch-model-repository` reads the manifest, writes every file and downloads the engine to its path
in a local folder, checking each sha256, and tritonserver loads that folder.

repository.json (schema `mlops.dev/triton-repository/v1`):

    {"schema": "mlops.dev/triton-repository/v1",
     "model": "digits",
     "digest": "<sha256 hex>",
     "files": [{"path": "digits/config.pbtxt", "sha256": "<hex>", "sizeBytes": 412}, ...],
     "artifact": {"path": "digits/3/model.onnx", "uri": "s3://bucket/engines/x/model.onnx",
                  "sha256": "<hex>", "sizeBytes": 104912}}

Paths are relative, `/`-separated, without `.` or `..` parts. The digest is the sha256 of the
canonical JSON of everything else in the manifest (schema, model, files, artifact: see `digest`):
equal content gives the equal prefix, and any change (a config, the serving code, the engine or
where it lives) a new one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

SCHEMA = "mlops.dev/triton-repository/v1"
MANIFEST_KEY = "repository.json"
# How many hex digits of the digest name the repository's prefix: 64 bits, collision-free in practice
# for the versions of one model, and short enough to read in a URI.
PREFIX_DIGITS = 16


class ManifestError(ValueError):
    """repository.json is not a manifest of this schema, or names a path outside the repository."""


def check_path(path: str) -> str:
    """A repository path: relative, `/`-separated, no empty, `.` or `..` part (it cannot escape)."""
    parts = path.split("/")
    if not path or path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in parts):
        raise ManifestError(f"not a relative repository path: {path!r}")
    return path


@dataclass(frozen=True)
class RepositoryFile:
    path: str
    sha256: str
    size_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "sizeBytes": self.size_bytes}


@dataclass(frozen=True)
class RepositoryArtifact:
    """The engine, by reference: fetched from `uri` and placed at `path`."""

    path: str
    uri: str
    sha256: str
    size_bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "uri": self.uri, "sha256": self.sha256, "sizeBytes": self.size_bytes}


def digest(model: str, files: Iterable[RepositoryFile], artifact: RepositoryArtifact) -> str:
    """sha256 (hex) of the canonical JSON of the schema, model, files (sorted by path) and artifact."""
    canonical = {
        "schema": SCHEMA,
        "model": model,
        "files": [f.to_json() for f in sorted(files, key=lambda f: f.path)],
        "artifact": artifact.to_json(),
    }
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class RepositoryManifest:
    model: str
    files: tuple[RepositoryFile, ...]
    artifact: RepositoryArtifact

    @property
    def digest(self) -> str:
        return digest(self.model, self.files, self.artifact)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "model": self.model,
            "digest": self.digest,
            "files": [f.to_json() for f in sorted(self.files, key=lambda f: f.path)],
            "artifact": self.artifact.to_json(),
        }

    def encode(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def parse(cls, data: bytes) -> RepositoryManifest:
        """The manifest in `data`; `ManifestError` for another schema, a bad path or a wrong digest."""
        try:
            raw = json.loads(data)
            if not isinstance(raw, dict) or raw.get("schema") != SCHEMA:
                found = raw.get("schema") if isinstance(raw, dict) else type(raw).__name__
                raise ManifestError(f"not a {SCHEMA} manifest (schema {found!r})")
            model = str(raw["model"])
            files = tuple(
                RepositoryFile(check_path(str(f["path"])), str(f["sha256"]), int(f["sizeBytes"]))
                for f in raw["files"]
            )
            a = raw["artifact"]
            artifact = RepositoryArtifact(
                check_path(str(a["path"])), str(a["uri"]), str(a["sha256"]), int(a["sizeBytes"])
            )
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            if isinstance(exc, ManifestError):
                raise
            raise ManifestError(f"malformed {MANIFEST_KEY}: {type(exc).__name__}: {exc}") from None
        paths = [f.path for f in files] + [artifact.path]
        if len(set(paths)) != len(paths):
            raise ManifestError(f"{MANIFEST_KEY} names a path twice: {sorted(paths)}")
        manifest = cls(model, files, artifact)
        if raw.get("digest") != manifest.digest:
            raise ManifestError(
                f"{MANIFEST_KEY} digest {raw.get('digest')!r} does not match its content ({manifest.digest})"
            )
        return manifest
