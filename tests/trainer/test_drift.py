"""`drift`: the DriftMonitor's check, end to end through the real CLI on moto's S3 server, with the
reference training run's model compiled to ONNX (once per module) and the real Evidently.

Current data: the digits' own test split (the training distribution) and the same images with their
brightness shifted (a drifted batch, written as a Dataset in the same format).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlops_contract import drift as contract
from mlops_trainer.dataset import load_split
from mlops_trainer.demo_data import digits_splits, write_image_dataset
from mlops_trainer.drift import image_statistics, output_statistics, sample_indices
from mlops_trainer.errors import ExitCode
from mlops_trainer.storage import LocalObjectStore, S3ObjectStore

from .support import (
    BUCKET,
    DATASET_PREFIX,
    S3Server,
    TrainerRun,
    free_port,
    run_trainer,
    s3_uri,
    trainer_env,
)

ENGINE_PREFIX = "engines/drift"
SHIFTED_PREFIX = "datasets/digits-brighter/v1"
ALL_COLUMNS = [*contract.IMAGE_COLUMNS, *contract.OUTPUT_COLUMNS]


@pytest.fixture(scope="module")
def engine_uri(
    reference_run: TrainerRun, s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory
) -> str:
    compiled = run_trainer(
        ["compile", "--model-uri", s3_uri("models/reference"), "--output-uri", s3_uri(ENGINE_PREFIX),
         "--target", "onnx", "--max-batch-size", "64"],
        trainer_env(s3_server), tmp_path_factory.mktemp("drift-compile"),
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    return s3_uri(ENGINE_PREFIX)


@pytest.fixture(scope="module")
def brighter(s3_client: Any) -> str:
    """The digits with every pixel 5 levels (of 16) brighter: the background is no longer black."""
    splits = digits_splits()
    shifted = {
        name: (np.clip(images.astype(np.int64) + 5, 0, 16), labels)
        for name, (images, labels) in splits.items()
    }
    write_image_dataset(S3ObjectStore(BUCKET, SHIFTED_PREFIX, s3_client), shifted)
    return s3_uri(SHIFTED_PREFIX)


def check(
    s3_server: S3Server,
    tmp_path: Path,
    *,
    engine: str,
    current: str,
    name: str,
    reference_dataset: str | None = s3_uri(DATASET_PREFIX),
    extra: list[str] | None = None,
    env: dict[str, str] | None = None,
) -> TrainerRun:
    args = ["drift", "--engine-uri", engine, "--dataset-uri", current,
            "--reference-uri", s3_uri(f"references/{name}"),
            "--output-uri", s3_uri(f"checks/{name}")]  # fmt: skip
    if reference_dataset:
        args += ["--reference-dataset-uri", reference_dataset]
    return run_trainer([*args, *(extra or [])], trainer_env(s3_server, env), tmp_path / name)


def read_json(s3_client: Any, key: str) -> Any:
    return json.loads(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read())


def test_same_distribution_is_not_drifted(
    engine_uri: str, s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    run = check(s3_server, tmp_path, engine=engine_uri, current=s3_uri(DATASET_PREFIX), name="same")
    assert run.returncode == 0, run.stderr[-4000:]
    assert len(run.termination_bytes) <= 4096
    result = run.summary[contract.DRIFT]
    assert result[contract.DRIFTED] is False
    assert result[contract.SHARE] < result[contract.THRESHOLD] == contract.DEFAULT_SHARE_THRESHOLD
    assert result[contract.COLUMN_COUNT] == len(ALL_COLUMNS)
    assert result[contract.REFERENCE_ROWS] == 1437  # the whole train split (below MAX_SAMPLES)
    assert result[contract.CURRENT_ROWS] == 360  # the test split
    by_name = {c[contract.NAME]: c for c in result[contract.COLUMNS_FIELD]}
    assert set(by_name) == set(ALL_COLUMNS)
    # Evidently chose each method (over 1000 reference rows: Wasserstein for numbers, Jensen-Shannon for
    # categories); the summary names it as a spec would (its stattest name, not "Wasserstein distance").
    assert by_name["brightness"][contract.COLUMN_METHOD] == "wasserstein"
    assert by_name["predicted_class"][contract.COLUMN_METHOD] == "jensenshannon"
    # The per-image statistics of a held-out split of the same data do not move.
    for column in ("brightness", "contrast", "sharpness"):
        assert by_name[column][contract.COLUMN_DRIFTED] is False, by_name[column]
    assert run.summary["artifacts"] == {
        contract.ARTIFACT_REPORT: s3_uri(f"checks/same/{contract.REPORT_FILE}"),
        contract.ARTIFACT_RESULT: s3_uri(f"checks/same/{contract.RESULT_FILE}"),
        contract.ARTIFACT_REFERENCE: s3_uri(f"references/same/{contract.REFERENCE_FILE}"),
    }


def test_brighter_images_drift_with_brightness_among_the_drifted_columns(
    engine_uri: str, brighter: str, s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    run = check(s3_server, tmp_path, engine=engine_uri, current=brighter, name="brighter")
    assert run.returncode == 0, run.stderr[-4000:]
    result = run.summary[contract.DRIFT]
    assert result[contract.DRIFTED] is True
    assert result[contract.SHARE] >= result[contract.THRESHOLD]
    columns = result[contract.COLUMNS_FIELD]
    drifted = [c[contract.NAME] for c in columns if c[contract.COLUMN_DRIFTED]]
    assert {"brightness", "contrast"} <= set(drifted)
    assert result[contract.DRIFTED_COUNT] == len(drifted)
    assert result[contract.SHARE] == pytest.approx(len(drifted) / len(ALL_COLUMNS), abs=1e-6)
    # Drifted columns come first.
    flags = [c[contract.COLUMN_DRIFTED] for c in columns]
    assert flags == sorted(flags, reverse=True)
    brightness = next(c for c in columns if c[contract.NAME] == "brightness")
    assert brightness[contract.COLUMN_METHOD]
    assert math.isfinite(brightness[contract.SCORE])

    # The report and the full result are in S3 under the check's prefix.
    report = s3_client.get_object(Bucket=BUCKET, Key=f"checks/brighter/{contract.REPORT_FILE}")["Body"].read()
    assert b"<html" in report[:2000].lower()
    assert b"brightness" in report
    full = read_json(s3_client, f"checks/brighter/{contract.RESULT_FILE}")
    assert [c[contract.NAME] for c in full[contract.COLUMNS_FIELD] if c[contract.COLUMN_DRIFTED]] == drifted
    assert {c[contract.NAME] for c in full[contract.COLUMNS_FIELD]} == set(ALL_COLUMNS)
    assert full["referenceWritten"] is True


def test_reference_is_written_once_and_then_read_instead_of_the_training_data(
    engine_uri: str, brighter: str, s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    key = f"references/once/{contract.REFERENCE_FILE}"
    first = check(s3_server, tmp_path, engine=engine_uri, current=s3_uri(DATASET_PREFIX), name="once")
    assert first.returncode == 0, first.stderr[-4000:]
    written = s3_client.head_object(Bucket=BUCKET, Key=key)
    assert read_json(s3_client, f"checks/once/{contract.RESULT_FILE}")["referenceWritten"] is True

    # The training data is gone for the second check: it can only have read the stored reference.
    second = check(
        s3_server, tmp_path / "again", engine=engine_uri, current=brighter, name="once",
        reference_dataset=s3_uri("datasets/deleted/v1"),
    )  # fmt: skip
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.summary[contract.DRIFT][contract.REFERENCE_ROWS] == 1437
    assert second.summary[contract.DRIFT][contract.DRIFTED] is True
    assert read_json(s3_client, f"checks/once/{contract.RESULT_FILE}")["referenceWritten"] is False
    again = s3_client.head_object(Bucket=BUCKET, Key=key)
    assert (again["ETag"], again["LastModified"]) == (written["ETag"], written["LastModified"])

    # Without a stored reference and nothing to compute it from, the check cannot run: a config error.
    missing = check(
        s3_server, tmp_path, engine=engine_uri, current=brighter, name="never-written", reference_dataset=None
    )
    assert missing.returncode == ExitCode.CONFIG
    assert contract.REFERENCE_DATASET_URI in missing.summary["message"]


def test_psi_from_the_environment_tests_every_column(
    engine_uri: str, brighter: str, s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    env = {
        contract.ENGINE_URI: engine_uri,
        "MLOPS_DATASET_URI": brighter,
        contract.REFERENCE_URI: s3_uri("references/psi"),
        contract.REFERENCE_DATASET_URI: s3_uri(DATASET_PREFIX),
        contract.OUTPUT_URI: s3_uri("checks/psi"),
        contract.METHOD: "psi",
        contract.COLUMN_THRESHOLD: "0.2",
        contract.SHARE_THRESHOLD: "0.25",
        contract.MAX_SAMPLES_ENV: "1000",
    }
    run = run_trainer(["drift"], trainer_env(s3_server, env), tmp_path / "psi")
    assert run.returncode == 0, run.stderr[-4000:]
    result = run.summary[contract.DRIFT]
    assert result[contract.THRESHOLD] == 0.25
    assert result[contract.REFERENCE_ROWS] == 1000  # sampled down to MAX_SAMPLES
    assert result[contract.CURRENT_ROWS] == 360
    full = read_json(s3_client, f"checks/psi/{contract.RESULT_FILE}")
    assert len(full[contract.COLUMNS_FIELD]) == len(ALL_COLUMNS)
    for column in full[contract.COLUMNS_FIELD]:
        assert column[contract.COLUMN_METHOD] == "psi", column
        assert column[contract.THRESHOLD] == 0.2
        # PSI is a distance: a column drifts when its score reaches the threshold.
        assert column[contract.COLUMN_DRIFTED] is (column[contract.SCORE] >= 0.2), column
    by_name = {c[contract.NAME]: c for c in full[contract.COLUMNS_FIELD]}
    assert by_name["brightness"][contract.COLUMN_DRIFTED] is True
    assert by_name["height"][contract.COLUMN_DRIFTED] is False  # every image is 8 pixels high


def test_a_numbers_only_method_tests_the_numbers_and_evidently_chooses_for_the_predicted_class(
    engine_uri: str, brighter: str, s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    """Wasserstein (or K-S) cannot test a category: the spec's method applies to the numerical columns
    and its threshold to them; Evidently picks the categorical test (the run used to fail)."""
    env = {
        contract.ENGINE_URI: engine_uri,
        "MLOPS_DATASET_URI": brighter,
        contract.REFERENCE_URI: s3_uri("references/wasserstein"),
        contract.REFERENCE_DATASET_URI: s3_uri(DATASET_PREFIX),
        contract.OUTPUT_URI: s3_uri("checks/wasserstein"),
        contract.METHOD: "wasserstein",
        contract.COLUMN_THRESHOLD: "0.1",
        contract.MAX_SAMPLES_ENV: "1000",
    }
    run = run_trainer(["drift"], trainer_env(s3_server, env), tmp_path / "wasserstein")
    assert run.returncode == 0, run.stderr[-4000:]
    full = read_json(s3_client, f"checks/wasserstein/{contract.RESULT_FILE}")
    by_name = {c[contract.NAME]: c for c in full[contract.COLUMNS_FIELD]}
    assert set(by_name) == set(ALL_COLUMNS)
    for name, column in by_name.items():
        if name == "predicted_class":
            assert column[contract.COLUMN_METHOD] not in contract.NUMERICAL_ONLY_METHODS, column
            assert column[contract.THRESHOLD] != 0.1, column  # Evidently's own threshold for its test
        else:
            assert (column[contract.COLUMN_METHOD], column[contract.THRESHOLD]) == ("wasserstein", 0.1), (
                column
            )
    assert by_name["brightness"][contract.COLUMN_DRIFTED] is True


def test_a_column_subset_is_all_that_is_tested(
    engine_uri: str, brighter: str, s3_server: S3Server, tmp_path: Path
) -> None:
    run = check(
        s3_server, tmp_path, engine=engine_uri, current=brighter, name="subset",
        extra=["--columns", '["height", "width", "predicted_class"]'],
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    result = run.summary[contract.DRIFT]
    assert {c[contract.NAME] for c in result[contract.COLUMNS_FIELD]} == {
        "height",
        "width",
        "predicted_class",
    }
    assert result[contract.COLUMN_COUNT] == 3

    unknown = check(
        s3_server, tmp_path, engine=engine_uri, current=brighter, name="subset",
        extra=["--columns", '["brightness", "hue"]'],
    )  # fmt: skip
    assert unknown.returncode == ExitCode.CONFIG
    assert "hue" in unknown.summary["message"]


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--method", "chisquare-ish"], ExitCode.CONFIG, "chisquare-ish"),
        (["--share-threshold", "0"], ExitCode.CONFIG, "share threshold"),
        (["--split", "validation"], ExitCode.DATA, "validation"),
    ],
)
def test_bad_settings_and_data_fail_permanently(
    engine_uri: str, s3_server: S3Server, tmp_path: Path, extra: list[str], code: ExitCode, words: str
) -> None:
    run = check(
        s3_server, tmp_path, engine=engine_uri, current=s3_uri(DATASET_PREFIX), name="bad", extra=extra
    )
    assert run.returncode == code, run.stderr[-3000:]
    assert run.summary["retryable"] is False
    assert words in run.summary["message"]


def test_missing_engine_is_a_model_check_failure_and_unreachable_s3_is_retryable(
    engine_uri: str, s3_server: S3Server, tmp_path: Path
) -> None:
    run = check(s3_server, tmp_path, engine=s3_uri("engines/none"), current=s3_uri(DATASET_PREFIX), name="x")
    assert run.returncode == ExitCode.MODEL_CHECK
    down = S3Server(f"http://127.0.0.1:{free_port()}")
    run = check(down, tmp_path / "down", engine=engine_uri, current=s3_uri(DATASET_PREFIX), name="y")
    assert run.returncode == ExitCode.RETRYABLE, run.stderr[-3000:]
    assert run.summary["retryable"] is True


def test_image_and_output_statistics() -> None:
    flat = np.full((1, 1, 8, 8), 0.5, dtype=np.float32)
    edge = np.zeros((1, 1, 8, 8), dtype=np.float32)
    edge[..., 4:] = 1.0
    stats = image_statistics(np.concatenate([flat, edge]))
    assert stats["brightness"] == pytest.approx([0.5, 0.5])
    assert stats["contrast"] == pytest.approx([0.0, 0.5])
    # A flat image has no edges; the step edge gives |Laplacian| 1 on the two columns beside it.
    assert stats["sharpness"] == pytest.approx([0.0, 2 * 6 / 36])
    assert list(stats["height"]) == [8, 8]
    assert list(stats["width"]) == [8, 8]

    outputs = output_statistics(np.array([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 30.0]]))
    assert list(outputs["predicted_class"]) == [0, 3]
    assert outputs["confidence"] == pytest.approx([0.25, 1.0], abs=1e-8)
    assert outputs["entropy"] == pytest.approx([math.log(4), 0.0], abs=1e-6)


def test_sampling_is_deterministic_and_bounded() -> None:
    assert list(sample_indices(5, 10)) == [0, 1, 2, 3, 4]
    chosen = sample_indices(100_000, 5000)
    assert len(chosen) == len(set(chosen.tolist())) == 5000
    assert list(chosen) == sorted(chosen)
    assert chosen[-1] < 100_000
    assert np.array_equal(chosen, sample_indices(100_000, 5000))


def test_a_sample_is_the_same_rows_whether_taken_while_reading_or_after(tmp_path: Path) -> None:
    images = np.arange(1000 * 4 * 4).reshape(1000, 4, 4) % 251
    labels = np.arange(1000) % 10
    store = LocalObjectStore(tmp_path)
    write_image_dataset(store, {"test": (images, labels)}, max_value=250, shard_records=64)
    full = load_split(store, "test")
    sampled = load_split(store, "test", lambda count: sample_indices(count, 300))
    chosen = sample_indices(1000, 300)
    assert sampled.features.shape == (300, 1, 4, 4)
    assert np.array_equal(sampled.features, full.features[chosen])
    assert np.array_equal(sampled.labels, labels[chosen])
    assert sampled.fingerprint == full.fingerprint


def test_write_new_never_replaces_an_existing_object(s3_client: Any, tmp_path: Path) -> None:
    for store in (S3ObjectStore(BUCKET, "write-new", s3_client), LocalObjectStore(tmp_path)):
        assert store.write_new("profile.csv.gz", b"first") is True
        assert store.write_new("profile.csv.gz", b"second") is False
        assert store.read("profile.csv.gz") == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["profile.csv.gz"]  # no temporary file left
