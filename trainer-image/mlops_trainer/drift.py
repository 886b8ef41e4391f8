"""The `drift` command: is the served model still seeing the data it was trained on?

Compares a profile of the training data (the reference) with the current Dataset, column by column,
with Evidently's data-drift tests (the contract: `mlops_contract.drift`). Columns, one row per sample:

- images: brightness (mean), contrast (standard deviation), sharpness (mean absolute 4-neighbour
  Laplacian), height, width, on the [0, 1] pixels `load_split` yields (channels averaged);
- tabular data (a 2-D feature matrix): `feature_<i>`, passed through;
- both: the compiled artifact's outputs on the sample: predicted_class, confidence (the top softmax
  probability) and entropy (of the softmax, in nats).

The reference is written once, as gzipped CSV, next to the served model; a check reads it and never
the training data again. Each side is a deterministic sample of at most `max_samples` rows.
"""

from __future__ import annotations

import gzip
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
from mlops_contract import drift as contract
from mlops_contract import envvars
from mlops_contract import result as result_contract

from .dataset import SplitData, check_fingerprint, load_split
from .errors import ConfigError, DataError, ModelCheckError
from .evaluate import Runner, onnx_runner, tensorrt_runner
from .storage import ObjectMissingError, ObjectStore, open_store, sha256_hex

if TYPE_CHECKING:
    import pandas as pd

SAMPLE_SEED = 0  # the same rows of the same data on every run
REFERENCE_SPLIT = "train"
CATEGORICAL_COLUMNS = ("predicted_class",)


@dataclass(frozen=True)
class DriftSettings:
    engine_uri: str  # the served model's compile output (metadata.json + artifact)
    dataset_uri: str  # the current data
    reference_uri: str  # prefix holding the reference profile
    output_uri: str  # prefix for the report and the result of this check
    reference_dataset_uri: str | None = None  # the training data, read only to write the reference
    split: str = "test"
    method: str | None = None  # a key of contract.METHODS; None: Evidently chooses per column
    column_threshold: float | None = None
    share_threshold: float = contract.DEFAULT_SHARE_THRESHOLD
    columns: tuple[str, ...] | None = None
    max_samples: int = contract.MAX_SAMPLES
    reference_fingerprint: str | None = None
    current_fingerprint: str | None = None

    def check(self) -> None:
        missing = [
            name
            for name, value in (
                (contract.ENGINE_URI, self.engine_uri),
                (envvars.DATASET_URI, self.dataset_uri),
                (contract.REFERENCE_URI, self.reference_uri),
                (contract.OUTPUT_URI, self.output_uri),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"drift needs {', '.join(missing)} (or the matching flags)")
        if self.method is not None and self.method not in contract.METHODS:
            raise ConfigError(f"drift method {self.method!r} is not one of {sorted(contract.METHODS)}")
        if not 0.0 < self.share_threshold <= 1.0:
            raise ConfigError(f"share threshold must lie in (0, 1], got {self.share_threshold}")
        if self.column_threshold is not None and not (
            math.isfinite(self.column_threshold) and self.column_threshold >= 0
        ):
            raise ConfigError(f"column threshold must be a finite number >= 0, got {self.column_threshold}")
        if self.max_samples < 1:
            raise ConfigError(f"max samples must be >= 1, got {self.max_samples}")
        if self.columns is not None and not self.columns:
            raise ConfigError("the list of columns to test is empty")


def parse_columns(text: str | None) -> tuple[str, ...] | None:
    """`MLOPS_DRIFT_COLUMNS`: a JSON list of column names."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{contract.COLUMNS} is not JSON: {exc}") from exc
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{contract.COLUMNS} must be a JSON list of column names")
    return tuple(dict.fromkeys(value))


def sample_indices(count: int, max_samples: int) -> npt.NDArray[np.int64]:
    """At most `max_samples` of `count` row indices, in order, the same on every run."""
    if count <= max_samples:
        return np.arange(count, dtype=np.int64)
    chosen = np.random.default_rng(SAMPLE_SEED).choice(count, size=max_samples, replace=False)
    return np.sort(chosen).astype(np.int64)


def image_statistics(features: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
    """The IMAGE_COLUMNS of a batch of images, (n, channels, height, width) or (n, height, width)."""
    gray = features.mean(axis=1) if features.ndim == 4 else features
    gray = gray.astype(np.float64)
    n, height, width = gray.shape
    flat = gray.reshape(n, -1)
    if height >= 3 and width >= 3:
        laplacian = (
            gray[:, :-2, 1:-1] + gray[:, 2:, 1:-1] + gray[:, 1:-1, :-2] + gray[:, 1:-1, 2:]
            - 4.0 * gray[:, 1:-1, 1:-1]
        )  # fmt: skip
        sharpness = np.abs(laplacian).reshape(n, -1).mean(axis=1)
    else:  # too small for a Laplacian
        sharpness = np.zeros(n)
    return {
        "brightness": flat.mean(axis=1),
        "contrast": flat.std(axis=1),
        "sharpness": sharpness,
        "height": np.full(n, height, dtype=np.int64),
        "width": np.full(n, width, dtype=np.int64),
    }


def output_statistics(logits: npt.NDArray[np.floating[Any]]) -> dict[str, npt.NDArray[Any]]:
    """The OUTPUT_COLUMNS of a batch of logits (n, classes)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    probabilities = np.exp(shifted)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    entropy = -np.sum(probabilities * np.log(np.clip(probabilities, 1e-12, None)), axis=1)
    return {
        "predicted_class": np.argmax(probabilities, axis=1).astype(np.int64),
        "confidence": probabilities.max(axis=1),
        "entropy": entropy,
    }


@dataclass(frozen=True)
class Engine:
    run: Runner
    runtime: str
    max_batch_size: int
    uri: str


def load_engine(engine_uri: str) -> Engine:
    """The compiled artifact as `compile` wrote it (see evaluate.py), checked against its sha256."""
    store = open_store(engine_uri)
    try:
        metadata = json.loads(store.read("metadata.json"))
        artifact_key = str(metadata["artifact"]["key"])
        expected_sha = str(metadata["artifact"]["sha256"])
        input_name = str(metadata["inputs"][0]["name"])
        max_batch_size = int(metadata["maxBatchSize"])
        artifact_format = str(metadata["format"])
    except ObjectMissingError as exc:
        raise ModelCheckError(f"{store.uri()}: no compiled artifact ({exc})") from exc
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        raise ModelCheckError(f"{store.uri('metadata.json')}: malformed ({exc!r})") from exc
    artifact = store.read(artifact_key)
    if sha256_hex(artifact) != expected_sha:
        raise ModelCheckError(f"{store.uri(artifact_key)}: sha256 does not match metadata.json")
    if artifact_format == "onnx":
        run, runtime = onnx_runner(artifact, input_name)
    elif artifact_format == "tensorrt":
        run, runtime = tensorrt_runner(artifact)
    else:
        raise ModelCheckError(f"unknown artifact format {artifact_format!r}")
    return Engine(run, runtime, max(1, max_batch_size), store.uri(artifact_key))


def profile(split: SplitData, engine: Engine, max_samples: int) -> pd.DataFrame:
    """The drift columns of a deterministic sample of one split."""
    import pandas as pd  # noqa: PLC0415 - only this command needs pandas

    features = split.features
    if len(features) > max_samples:  # not sampled while loading
        features = features[sample_indices(len(features), max_samples)]
    columns: dict[str, npt.NDArray[Any]] = {}
    if features.ndim == 2:
        columns |= {f"feature_{i}": features[:, i].astype(np.float64) for i in range(features.shape[1])}
    elif features.ndim in (3, 4):
        columns |= image_statistics(features)
    else:
        raise DataError(f"features of shape {list(features.shape[1:])} are neither images nor a table")
    outputs: list[npt.NDArray[np.float32]] = []
    for start in range(0, len(features), engine.max_batch_size):
        batch = np.ascontiguousarray(features[start : start + engine.max_batch_size])
        try:
            outputs.append(np.asarray(engine.run(batch)))
        except Exception as exc:  # the runtime's own errors: shape or type mismatch with the data
            raise ModelCheckError(f"{engine.uri}: cannot run on this data: {exc}") from exc
    logits = np.concatenate(outputs) if outputs else np.zeros((0, 1), dtype=np.float32)
    if logits.ndim != 2 or len(logits) != len(features):
        raise ModelCheckError(f"{engine.uri}: output shape {list(logits.shape)} is not (samples, classes)")
    if not np.all(np.isfinite(logits)):
        raise ModelCheckError(f"{engine.uri}: non-finite outputs on this data")
    columns |= output_statistics(logits)
    return pd.DataFrame(columns)


def encode_profile(frame: pd.DataFrame) -> bytes:
    # mtime=0: the same profile is the same bytes.
    return gzip.compress(frame.to_csv(index=False).encode(), mtime=0)


def decode_profile(data: bytes, uri: str) -> pd.DataFrame:
    import pandas as pd  # noqa: PLC0415

    try:
        frame = pd.read_csv(io.BytesIO(gzip.decompress(data)))
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"{uri}: not a readable reference profile ({exc})") from exc
    if frame.empty:
        raise DataError(f"{uri}: the reference profile has no rows")
    return frame


def _load_checked(uri: str, split: str, fingerprint: str | None, max_samples: int) -> SplitData:
    """The sample of one split (only the sampled records are kept as shards are read)."""
    store = open_store(uri)
    data = load_split(store, split, lambda count: sample_indices(count, max_samples))
    if fingerprint:
        check_fingerprint(store, fingerprint, data.fingerprint)
    return data


def reference_profile(
    settings: DriftSettings, store: ObjectStore, engine: Engine
) -> tuple[pd.DataFrame, bool]:
    """The reference profile, and whether this check wrote it (it does only when none exists)."""
    try:
        return decode_profile(store.read(contract.REFERENCE_FILE), store.uri(contract.REFERENCE_FILE)), False
    except ObjectMissingError:
        pass
    if not settings.reference_dataset_uri:
        raise ConfigError(
            f"{store.uri(contract.REFERENCE_FILE)} does not exist and {contract.REFERENCE_DATASET_URI} "
            "is not set to compute it from"
        )
    training = _load_checked(
        settings.reference_dataset_uri, REFERENCE_SPLIT, settings.reference_fingerprint, settings.max_samples
    )
    frame = profile(training, engine, settings.max_samples)
    if store.write_new(contract.REFERENCE_FILE, encode_profile(frame)):
        return frame, True
    # Another check wrote it first: use that one, so every check compares against the same rows.
    return decode_profile(store.read(contract.REFERENCE_FILE), store.uri(contract.REFERENCE_FILE)), False


@dataclass(frozen=True)
class ColumnResult:
    name: str
    method: str
    score: float
    threshold: float
    drifted: bool

    def to_json(self) -> dict[str, Any]:
        return {
            contract.NAME: self.name,
            contract.COLUMN_METHOD: self.method,
            contract.SCORE: round(self.score, 6) if math.isfinite(self.score) else None,
            contract.THRESHOLD: self.threshold,
            contract.COLUMN_DRIFTED: self.drifted,
        }


def _stattest_ids() -> dict[str, str]:
    """Evidently's stattest names by display name: a method Evidently chose is reported by its display
    name ("K-S p_value"), one the spec set by its name ("ks"); the summary always says the name."""
    try:
        from evidently.legacy.calculations.stattests.registry import _registered_stat_tests  # noqa: PLC0415
    except ImportError:  # a later Evidently moved it: display names then
        return {}
    return {
        test.display_name: test.name
        for by_type in _registered_stat_tests.values()
        for test in by_type.values()
    }


def _method_options(settings: DriftSettings) -> dict[str, Any]:
    """The spec's method and threshold as Evidently's options: a test of numbers only (K-S,
    Wasserstein) applies to the numerical columns, and Evidently chooses for the categorical ones
    (the predicted class); PSI and Jensen-Shannon apply to every column."""
    if settings.method is None:
        return {"threshold": settings.column_threshold}
    method = contract.METHODS[settings.method]
    if settings.method in contract.NUMERICAL_ONLY_METHODS:
        return {"num_method": method, "num_threshold": settings.column_threshold}
    return {"method": method, "threshold": settings.column_threshold}


def run_evidently(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    columns: Sequence[str],
    settings: DriftSettings,
) -> tuple[list[ColumnResult], str]:
    """Evidently's drift test of each column; returns the results and the HTML report."""
    from evidently import DataDefinition, Dataset, Report  # noqa: PLC0415
    from evidently.presets import DataDriftPreset  # noqa: PLC0415

    categorical = [c for c in columns if c in CATEGORICAL_COLUMNS]
    definition = DataDefinition(
        numerical_columns=[c for c in columns if c not in CATEGORICAL_COLUMNS],
        categorical_columns=categorical,
    )
    preset = DataDriftPreset(
        columns=list(columns), drift_share=settings.share_threshold, **_method_options(settings)
    )
    snapshot = Report([preset], include_tests=True).run(
        current_data=Dataset.from_pandas(current[list(columns)], data_definition=definition),
        reference_data=Dataset.from_pandas(reference[list(columns)], data_definition=definition),
    )
    result = snapshot.dict()
    # Each ValueDrift metric has one test ("drift") that fails when Evidently finds the column drifted.
    failed = {
        test["metric_config"]["metric_id"]: str(test["status"]).endswith("FAIL")
        for test in result["tests"]
        if test.get("id") == "drift"
    }
    method_ids = _stattest_ids()
    found: dict[str, ColumnResult] = {}
    for metric in result["metrics"]:
        config = metric["config"]
        if not str(config.get("type", "")).endswith(":ValueDrift"):
            continue
        if metric["id"] not in failed:
            raise DataError(f"Evidently reported no drift test for column {config['column']!r}")
        found[str(config["column"])] = ColumnResult(
            name=str(config["column"]),
            method=method_ids.get(str(config["method"]), str(config["method"])),
            score=float(metric["value"]),
            threshold=float(config["threshold"]),
            drifted=failed[metric["id"]],
        )
    missing = [c for c in columns if c not in found]
    if missing:
        raise DataError(f"Evidently reported no drift for columns {missing}")
    return [found[c] for c in columns], snapshot.get_html_str(as_iframe=False)


def drift(settings: DriftSettings) -> dict[str, Any]:
    settings.check()
    from evidently import __version__ as evidently_version  # noqa: PLC0415

    engine = load_engine(settings.engine_uri)
    reference_store = open_store(settings.reference_uri)
    output_store = open_store(settings.output_uri)
    reference, wrote_reference = reference_profile(settings, reference_store, engine)
    current_data = _load_checked(
        settings.dataset_uri, settings.split, settings.current_fingerprint, settings.max_samples
    )
    current = profile(current_data, engine, settings.max_samples)

    available = [c for c in current.columns if c in reference.columns]
    if settings.columns is not None:
        unknown = sorted(set(settings.columns) - set(available))
        if unknown:
            raise ConfigError(f"{contract.COLUMNS} names unknown columns {unknown}; columns are {available}")
        columns = list(settings.columns)
    else:
        columns = available
    if not columns:
        raise DataError("the reference and the current data have no column in common")

    results, html = run_evidently(reference, current, columns, settings)
    drifted_count = sum(r.drifted for r in results)
    share = drifted_count / len(results)
    drifted = share >= settings.share_threshold
    ordered = sorted(results, key=lambda r: not r.drifted)  # stable: drifted first, else column order

    output_store.write_atomic(contract.REPORT_FILE, html.encode())
    headline = {
        contract.DRIFTED: drifted,
        contract.SHARE: round(share, 6),
        contract.THRESHOLD: settings.share_threshold,
        contract.COLUMN_COUNT: len(results),
        contract.DRIFTED_COUNT: drifted_count,
        contract.REFERENCE_ROWS: len(reference),
        contract.CURRENT_ROWS: len(current),
    }
    full = {
        **headline,
        contract.COLUMNS_FIELD: [r.to_json() for r in ordered],
        "method": settings.method,
        "columnThreshold": settings.column_threshold,
        "referenceFingerprint": settings.reference_fingerprint,
        "currentFingerprint": settings.current_fingerprint or current_data.fingerprint,
        "currentUri": settings.dataset_uri,
        "currentSplit": settings.split,
        "referenceWritten": wrote_reference,
        "engine": engine.uri,
        "runtime": engine.runtime,
        "evidently": evidently_version,
    }
    output_store.write_atomic(contract.RESULT_FILE, json.dumps(full, indent=2).encode())
    return {
        contract.DRIFT: {
            **headline,
            contract.COLUMNS_FIELD: [r.to_json() for r in ordered[: contract.MAX_COLUMNS_IN_SUMMARY]],
        },
        result_contract.ARTIFACTS: {
            contract.ARTIFACT_REPORT: output_store.uri(contract.REPORT_FILE),
            contract.ARTIFACT_RESULT: output_store.uri(contract.RESULT_FILE),
            contract.ARTIFACT_REFERENCE: reference_store.uri(contract.REFERENCE_FILE),
        },
    }
