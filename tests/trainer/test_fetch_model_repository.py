"""`mlops-trainer fetch-model-repository`: a serving pod's init container materializes the Triton model
repository the operator published (repository.json + small files under a content-addressed prefix,
the engine by reference), through the real CLI against moto's S3 server.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from mlops_contract.modelrepository import (
    MANIFEST_KEY,
    RepositoryArtifact,
    RepositoryFile,
    RepositoryManifest,
)
from mlops_trainer import model_repository
from mlops_trainer.errors import ExitCode

from .support import BUCKET, S3Server, TrainerRun, free_port, run_trainer, s3_uri, trainer_env

CONFIG = b'name: "digits"\nbackend: "python"\nmax_batch_size: 8\n'
MODEL_PY = b"class TritonPythonModel:\n    pass\n"
# Larger than one streaming chunk of the tests that shrink it, with every byte value.
ENGINE = bytes(range(256)) * 1200


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def publish(
    s3_client: Any, name: str, engine: bytes = ENGINE, *, files: dict[str, bytes] | None = None
) -> tuple[str, RepositoryManifest]:
    """What the operator's publish_repository writes: the engine stays where compile put it."""
    engine_key = f"engines/{name}/model.onnx"
    s3_client.put_object(Bucket=BUCKET, Key=engine_key, Body=engine)
    files = files or {"digits/config.pbtxt": CONFIG, "digits/1/model.py": MODEL_PY}
    manifest = RepositoryManifest(
        "digits",
        tuple(RepositoryFile(path, sha(data), len(data)) for path, data in sorted(files.items())),
        RepositoryArtifact("digits/1/model.onnx", s3_uri(engine_key), sha(engine), len(engine)),
    )
    prefix = f"serving/{name}/triton/digits/{manifest.digest[:16]}"
    for path, data in files.items():
        s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path}", Body=data)
    s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/{MANIFEST_KEY}", Body=manifest.encode())
    return s3_uri(prefix) + "/", manifest


def fetch(s3_server: S3Server, uri: str, target: Path, work_dir: Path, **env: str) -> TrainerRun:
    args = ["fetch-model-repository", "--repository-uri", uri, "--repository-dir", str(target)]
    return run_trainer(args, trainer_env(s3_server, env), work_dir, timeout=120)


def test_fetch_writes_every_file_and_the_engine_and_reports_them(
    s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    uri, manifest = publish(s3_client, "happy")
    target = tmp_path / "models"
    run = fetch(s3_server, uri, target, tmp_path / "run")

    assert run.returncode == 0, run.stderr[-3000:]
    assert (target / "digits/config.pbtxt").read_bytes() == CONFIG
    assert (target / "digits/1/model.py").read_bytes() == MODEL_PY
    assert (target / "digits/1/model.onnx").read_bytes() == ENGINE
    # Nothing else: no manifest, no temporary files tritonserver could trip over.
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "digits/1/model.onnx",
        "digits/1/model.py",
        "digits/config.pbtxt",
    ]
    assert run.summary["status"] == "Succeeded"
    assert run.summary["command"] == "fetch-model-repository"
    assert run.summary["repository"] == {
        "uri": uri,
        "dir": str(target.resolve()),
        "model": "digits",
        "digest": manifest.digest,
        "files": 2,
        "engine": {
            "uri": manifest.artifact.uri,
            "path": "digits/1/model.onnx",
            "sha256": sha(ENGINE),
            "sizeBytes": len(ENGINE),
            "reused": False,
        },
    }

    # An init container that runs again (its pod restarted) keeps the engine it already holds.
    again = fetch(s3_server, uri, target, tmp_path / "again")
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.summary["repository"]["engine"]["reused"] is True


def test_fetch_reads_its_settings_from_the_environment(
    s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    uri, _ = publish(s3_client, "from-env")
    target = tmp_path / "models"
    run = run_trainer(
        ["fetch-model-repository"],
        trainer_env(s3_server, {"MLOPS_REPOSITORY_URI": uri, "MLOPS_REPOSITORY_DIR": str(target)}),
        tmp_path / "run",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (target / "digits/1/model.onnx").read_bytes() == ENGINE


def test_an_engine_replaced_after_publication_fails_permanently_and_leaves_no_engine(
    s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    uri, manifest = publish(s3_client, "replaced")
    s3_client.put_object(Bucket=BUCKET, Key="engines/replaced/model.onnx", Body=ENGINE[:-1] + b"\x00")
    target = tmp_path / "models"
    run = fetch(s3_server, uri, target, tmp_path / "run")

    assert run.returncode == ExitCode.DATA
    assert (run.summary["status"], run.summary["reason"], run.summary["retryable"]) == (
        "Failed",
        "ChecksumMismatch",
        False,
    )
    assert manifest.artifact.uri in run.summary["message"]
    assert manifest.artifact.sha256 in run.summary["message"]
    assert not (target / "digits/1/model.onnx").exists()
    assert not any(p.name.startswith(".model.onnx") for p in (target / "digits/1").iterdir())


def test_a_changed_small_file_fails_permanently(s3_server: S3Server, s3_client: Any, tmp_path: Path) -> None:
    uri, _ = publish(s3_client, "config-changed")
    key = uri.removeprefix(f"s3://{BUCKET}/") + "digits/config.pbtxt"
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=CONFIG + b"max_batch_size: 64\n")
    run = fetch(s3_server, uri, tmp_path / "models", tmp_path / "run")
    assert run.returncode == ExitCode.DATA
    assert run.summary["reason"] == "ChecksumMismatch"
    assert "digits/config.pbtxt" in run.summary["message"]


def test_a_manifest_under_another_digest_prefix_is_refused(
    s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    uri, manifest = publish(s3_client, "moved")
    moved = uri.replace(manifest.digest[:16], "0123456789abcdef")
    s3_client.put_object(
        Bucket=BUCKET, Key=moved.removeprefix(f"s3://{BUCKET}/") + MANIFEST_KEY, Body=manifest.encode()
    )
    run = fetch(s3_server, moved, tmp_path / "models", tmp_path / "run")
    assert run.returncode == ExitCode.DATA
    assert run.summary["reason"] == "ChecksumMismatch"
    assert "0123456789abcdef" in run.summary["message"]


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        (None, "ObjectMissing"),
        (b"{not json", "InvalidRepositoryManifest"),
        (json.dumps({"schema": "mlops.dev/engine-metadata/v1"}).encode(), "InvalidRepositoryManifest"),
    ],
)
def test_a_missing_or_foreign_manifest_fails_permanently(
    s3_server: S3Server, s3_client: Any, tmp_path: Path, manifest: bytes | None, reason: str
) -> None:
    prefix = f"serving/broken-{reason}/triton/digits/v1"
    if manifest is not None:
        s3_client.put_object(Bucket=BUCKET, Key=f"{prefix}/{MANIFEST_KEY}", Body=manifest)
    run = fetch(s3_server, s3_uri(prefix) + "/", tmp_path / "models", tmp_path / "run")
    assert run.returncode == ExitCode.DATA
    assert (run.summary["reason"], run.summary["retryable"]) == (reason, False)


def test_a_path_escaping_the_repository_is_refused_before_anything_is_written(
    s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    uri, manifest = publish(s3_client, "escape")
    raw = manifest.to_json()
    raw["files"][0]["path"] = "../outside.txt"
    key = uri.removeprefix(f"s3://{BUCKET}/") + MANIFEST_KEY
    s3_client.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(raw).encode())
    run = fetch(s3_server, uri, tmp_path / "models", tmp_path / "run")
    assert run.returncode == ExitCode.DATA
    assert run.summary["reason"] == "InvalidRepositoryManifest"
    assert not (tmp_path / "outside.txt").exists()


def test_without_a_uri_or_folder_it_is_a_config_error(s3_server: S3Server, tmp_path: Path) -> None:
    run = run_trainer(["fetch-model-repository"], trainer_env(s3_server), tmp_path)
    assert run.returncode == ExitCode.CONFIG
    assert "MLOPS_REPOSITORY_URI" in run.summary["message"]


def test_an_unreachable_s3_endpoint_is_retryable(s3_client: Any, s3_server: S3Server, tmp_path: Path) -> None:
    uri, _ = publish(s3_client, "unreachable")
    closed = f"http://127.0.0.1:{free_port()}"
    run = fetch(s3_server, uri, tmp_path / "models", tmp_path / "run", AWS_ENDPOINT_URL_S3=closed)
    assert run.returncode == ExitCode.RETRYABLE
    assert (run.summary["reason"], run.summary["retryable"]) == ("StorageUnavailable", True)


def test_the_engine_streams_in_chunks_and_is_hashed_as_it_arrives(
    s3_server: S3Server, s3_client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, with chunks far smaller than the engine: the bytes and the sha256 still match."""
    _, manifest = publish(s3_client, "chunks")
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(model_repository, "CHUNK_BYTES", 4096)
    target = tmp_path / "models" / "digits/1/model.onnx"
    assert model_repository._download(manifest.artifact.uri, target) == (sha(ENGINE), len(ENGINE))
    assert target.read_bytes() == ENGINE
