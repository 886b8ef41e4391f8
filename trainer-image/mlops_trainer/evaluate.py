"""The `evaluate` command: accuracy, latency percentiles and size of a compiled artifact.

Loads what `compile` wrote (TensorRT engine or ONNX model, by its metadata.json), runs the
held-out split through it, then times fixed-size batches after a warm-up that is not counted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from mlops_contract import envvars

from .dataset import load_split
from .errors import ConfigError, ModelCheckError
from .storage import open_store, sha256_hex

Runner = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


@dataclass(frozen=True)
class EvaluateSettings:
    engine_uri: str  # the compile output prefix (metadata.json + artifact)
    dataset_uri: str
    split: str = "test"
    batch_size: int | None = None  # default: the engine's max batch size
    warmup_batches: int = 10
    latency_batches: int = 100

    def check(self) -> None:
        if not self.engine_uri or not self.dataset_uri:
            raise ConfigError(
                f"evaluate needs {envvars.ENGINE_URI} and {envvars.DATASET_URI}"
                " (or --engine-uri/--dataset-uri)"
            )
        if self.warmup_batches < 0 or self.latency_batches < 1:
            raise ConfigError("warm-up batches must be >= 0 and latency batches >= 1")


def onnx_runner(artifact: bytes, input_name: str) -> tuple[Runner, str]:
    import onnxruntime as ort  # noqa: PLC0415

    providers = [
        p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()
    ]
    session = ort.InferenceSession(artifact, providers=providers)

    def run(batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        (output,) = session.run(None, {input_name: batch})
        result: npt.NDArray[np.float32] = output
        return result

    return run, f"onnxruntime {ort.__version__} ({session.get_providers()[0]})"


def tensorrt_runner(artifact: bytes) -> tuple[Runner, str]:
    from .tensorrt_backend import EngineRunner, import_tensorrt  # noqa: PLC0415

    runner = EngineRunner(artifact)
    return runner.run, f"tensorrt {import_tensorrt().__version__}"


def percentile_ms(samples_seconds: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(samples_seconds) * 1000.0, q)), 4)


def evaluate(settings: EvaluateSettings) -> dict[str, Any]:
    settings.check()
    engine_store = open_store(settings.engine_uri)
    metadata = json.loads(engine_store.read("metadata.json"))
    artifact_key = metadata["artifact"]["key"]
    artifact = engine_store.read(artifact_key)
    if sha256_hex(artifact) != metadata["artifact"]["sha256"]:
        raise ModelCheckError(f"{engine_store.uri(artifact_key)}: sha256 does not match metadata.json")
    input_name = metadata["inputs"][0]["name"]
    if metadata["format"] == "tensorrt":
        run, runtime = tensorrt_runner(artifact)
    elif metadata["format"] == "onnx":
        run, runtime = onnx_runner(artifact, input_name)
    else:
        raise ModelCheckError(f"unknown artifact format {metadata['format']!r}")

    split = load_split(open_store(settings.dataset_uri), settings.split)
    batch_size = settings.batch_size or int(metadata["maxBatchSize"])
    if batch_size > int(metadata["maxBatchSize"]):
        raise ConfigError(f"batch size {batch_size} exceeds the engine's maximum {metadata['maxBatchSize']}")

    correct = 0
    for start in range(0, len(split), batch_size):
        logits = run(np.ascontiguousarray(split.features[start : start + batch_size]))
        correct += int(np.sum(np.argmax(logits, axis=1) == split.labels[start : start + batch_size]))

    batch = np.ascontiguousarray(np.resize(split.features, (batch_size, *split.features.shape[1:])))
    for _ in range(settings.warmup_batches):
        run(batch)
    timings: list[float] = []
    for _ in range(settings.latency_batches):
        started = time.perf_counter()
        run(batch)
        timings.append(time.perf_counter() - started)

    size_bytes = len(artifact)
    return {
        "metrics": {
            "accuracy": correct / max(1, len(split)),
            "latency_p50_ms": percentile_ms(timings, 50),
            "latency_p95_ms": percentile_ms(timings, 95),
            "latency_p99_ms": percentile_ms(timings, 99),
            "throughput_samples_per_second": round(batch_size * len(timings) / sum(timings), 1),
            "size_bytes": float(size_bytes),
            "size_mb": round(size_bytes / 1_000_000, 6),
        },
        "evaluation": {
            "format": metadata["format"],
            "precision": metadata["precision"],
            "runtime": runtime,
            "split": settings.split,
            "samples": len(split),
            "batchSize": batch_size,
            "warmupBatches": settings.warmup_batches,
            "latencyBatches": settings.latency_batches,
        },
        "artifacts": {"engine": engine_store.uri(artifact_key)},
    }
