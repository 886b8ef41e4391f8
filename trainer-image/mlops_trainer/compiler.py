"""The `compile` command: trained ONNX model -> TensorRT engine (or a validated ONNX model).

Reads `model.onnx` and `metadata.json` from the training output, writes the artifact and an engine
metadata file (same format for both targets) to the compile output:

    model.plan | model.onnx     the serialized TensorRT engine, or the ONNX model
    metadata.json               schema mlops.dev/engine-metadata/v1 (see README.md)
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from mlops_contract import envvars

from . import __version__
from .dataset import load_split
from .errors import ConfigError, ModelCheckError
from .storage import ObjectStore, open_store, sha256_hex
from .tensorrt_backend import EngineRequest, ShapeRange, TensorSpec, build_engine

ENGINE_METADATA_SCHEMA = "mlops.dev/engine-metadata/v1"
METADATA_KEY = "metadata.json"
ARTIFACT_KEYS = {"tensorrt": "model.plan", "onnx": "model.onnx"}
Target = Literal["tensorrt", "onnx"]
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class CompileSettings:
    model_uri: str  # the training output prefix (model.onnx + metadata.json)
    output_uri: str
    target: Target = "tensorrt"
    precision: str = "fp16"
    max_batch_size: int = 8
    dynamic_shapes: tuple[ShapeRange, ...] = ()
    workspace_mib: int = 1024
    calibration_dataset_uri: str | None = None
    calibration_max_samples: int = 512
    calibration_batch_size: int = 32
    validation_tolerance: float = 1e-4

    def check(self) -> None:
        if not self.model_uri or not self.output_uri:
            raise ConfigError(
                f"compile needs {envvars.MODEL_URI} and {envvars.OUTPUT_URI} (or --model-uri/--output-uri)"
            )
        if self.target not in ARTIFACT_KEYS:
            raise ConfigError(f"target must be tensorrt or onnx, got {self.target!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.max_batch_size < 1 or self.workspace_mib < 1:
            raise ConfigError("max batch size and workspace must be at least 1")
        if self.target == "tensorrt" and self.precision == "int8" and not self.calibration_dataset_uri:
            raise ConfigError(f"precision int8 needs calibration data: set {envvars.CALIBRATION_DATASET_URI}")
        if self.calibration_max_samples < 1 or self.calibration_batch_size < 1:
            raise ConfigError("calibration sample and batch counts must be at least 1")


def parse_dynamic_shapes(text: str | None) -> tuple[ShapeRange, ...]:
    """JSON list of {input, min, opt, max} (ModelVersion.spec.compile.dynamicShapes)."""
    if not text:
        return ()
    try:
        raw = json.loads(text)
        return tuple(
            ShapeRange(
                str(item["input"]),
                tuple(int(d) for d in item["min"]),
                tuple(int(d) for d in item["opt"]),
                tuple(int(d) for d in item["max"]),
            )
            for item in raw
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"dynamic shapes must be a JSON list of {{input, min, opt, max}}: {exc}") from exc


def optimization_profiles(
    inputs: Sequence[TensorSpec], max_batch_size: int, overrides: Sequence[ShapeRange] = ()
) -> list[ShapeRange]:
    """One profile entry per input: batch 1..max_batch_size (tuned for the max) unless overridden.

    Overrides must keep the model's static axes and stay within max_batch_size.
    """
    by_name = {o.input: o for o in overrides}
    unknown = set(by_name) - {spec.name for spec in inputs}
    if unknown:
        raise ConfigError(
            f"dynamic shapes name unknown inputs {sorted(unknown)}; inputs are {[s.name for s in inputs]}"
        )
    profiles: list[ShapeRange] = []
    for spec in inputs:
        override = by_name.get(spec.name)
        if override is None:
            static = tuple(1 if d < 0 else d for d in spec.shape[1:])
            profiles.append(
                ShapeRange(spec.name, (1, *static), (max_batch_size, *static), (max_batch_size, *static))
            )
            continue
        for shape in (override.min, override.opt, override.max):
            if len(shape) != len(spec.shape):
                raise ConfigError(
                    f"{spec.name}: shape {list(shape)} has rank {len(shape)}, input has {len(spec.shape)}"
                )
            for axis, (want, have) in enumerate(zip(spec.shape, shape, strict=True)):
                if want >= 0 and want != have:
                    raise ConfigError(
                        f"{spec.name}: axis {axis} is fixed at {want}, shape {list(shape)} says {have}"
                    )
        if any(
            not (lo <= mid <= hi)
            for lo, mid, hi in zip(override.min, override.opt, override.max, strict=True)
        ):
            raise ConfigError(f"{spec.name}: need min <= opt <= max on every axis")
        if override.min[0] < 1 or override.max[0] > max_batch_size:
            raise ConfigError(f"{spec.name}: batch range must lie within 1..{max_batch_size}")
        profiles.append(override)
    return profiles


def calibration_batches(
    features: npt.NDArray[Any], batch_size: int, max_samples: int
) -> list[npt.NDArray[np.float32]]:
    """Fixed-size float32 batches of the first `max_samples` samples.

    TensorRT calibrates with one fixed shape, so a short last batch is dropped; when fewer samples
    than one batch exist, they form a single smaller batch.
    """
    samples = np.ascontiguousarray(features[:max_samples], dtype=np.float32)
    if len(samples) == 0:
        raise ModelCheckError("calibration data set is empty")
    if len(samples) < batch_size:
        return [samples]
    count = len(samples) // batch_size
    return [np.ascontiguousarray(samples[i * batch_size : (i + 1) * batch_size]) for i in range(count)]


def _read_source(store: ObjectStore) -> tuple[bytes, dict[str, Any]]:
    source_meta = json.loads(store.read("metadata.json"))
    onnx_bytes = store.read(source_meta["onnx"]["key"])
    if sha256_hex(onnx_bytes) != source_meta["onnx"]["sha256"]:
        raise ModelCheckError(f"{store.uri(source_meta['onnx']['key'])}: sha256 does not match metadata.json")
    return onnx_bytes, source_meta


def _source_inputs(source_meta: dict[str, Any]) -> tuple[TensorSpec, ...]:
    spec = source_meta["input"]
    return (TensorSpec(spec["name"], spec["dtype"], tuple(spec["shape"])),)


def _source_outputs(source_meta: dict[str, Any]) -> tuple[TensorSpec, ...]:
    spec = source_meta["output"]
    return (TensorSpec(spec["name"], spec["dtype"], tuple(spec["shape"])),)


def validate_onnx(
    onnx_bytes: bytes, profiles: Sequence[ShapeRange], samples: npt.NDArray[np.float32], tolerance: float
) -> dict[str, Any]:
    """Run the model in ONNX Runtime at the profile's batch sizes; every sample's output must not depend on
    the batch it came in (which checks the dynamic batch axis) and must be finite."""
    import onnx  # noqa: PLC0415
    import onnxruntime as ort  # noqa: PLC0415

    try:
        onnx.checker.check_model(onnx.load_from_string(onnx_bytes))
    except onnx.checker.ValidationError as exc:
        raise ModelCheckError(f"ONNX model is invalid: {exc}") from exc
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    (profile,) = profiles
    sizes = sorted({profile.min[0], profile.opt[0], profile.max[0]})
    reference: npt.NDArray[np.float32] | None = None
    worst = 0.0
    for size in sizes:
        batch = np.ascontiguousarray(np.resize(samples, (size, *samples.shape[1:])), dtype=np.float32)
        (output,) = session.run(None, {profile.input: batch})
        if not np.all(np.isfinite(output)):
            raise ModelCheckError(f"ONNX Runtime produced non-finite outputs at batch size {size}")
        if reference is None:
            reference = output[:1]
        worst = max(worst, float(np.max(np.abs(output[:1] - reference))))
    if worst > tolerance:
        raise ModelCheckError(
            f"outputs depend on the batch size: max abs difference {worst:.3g} > {tolerance:.3g}"
        )
    return {
        "runtime": "onnxruntime",
        "onnxruntimeVersion": ort.__version__,
        "batchSizes": sizes,
        "maxAbsDiff": worst,
    }


def compile_model(settings: CompileSettings) -> dict[str, Any]:
    settings.check()
    source = open_store(settings.model_uri)
    output = open_store(settings.output_uri)
    onnx_bytes, source_meta = _read_source(source)
    inputs, outputs = _source_inputs(source_meta), _source_outputs(source_meta)
    profiles = optimization_profiles(inputs, settings.max_batch_size, settings.dynamic_shapes)

    calibration: list[npt.NDArray[np.float32]] = []
    if settings.calibration_dataset_uri:
        # The train split: calibrating on the held-out split would leak it into the evaluation.
        split = load_split(open_store(settings.calibration_dataset_uri), "train")
        calibration = calibration_batches(
            split.features, settings.calibration_batch_size, settings.calibration_max_samples
        )
    samples = (
        calibration[0]
        if calibration
        else np.random.default_rng(0).random((1, *profiles[0].opt[1:]), dtype=np.float32)
    )

    metadata: dict[str, Any] = {
        "schema": ENGINE_METADATA_SCHEMA,
        "format": settings.target,
        "requestedPrecision": settings.precision,
        "profiles": [p.to_json() for p in profiles],
        "maxBatchSize": settings.max_batch_size,
        "source": {
            "uri": source.uri(source_meta["onnx"]["key"]),
            "sha256": source_meta["onnx"]["sha256"],
            "model": source_meta.get("model"),
            "metrics": source_meta.get("metrics"),
            "dataset": source_meta.get("dataset"),
        },
        "preprocessing": source_meta.get("preprocessing"),
        "versions": {"mlopsTrainer": __version__},
    }
    if settings.target == "tensorrt":
        built = build_engine(
            EngineRequest(
                onnx_bytes=onnx_bytes,
                precision=settings.precision,
                profiles=profiles,
                workspace_bytes=settings.workspace_mib * 1024 * 1024,
                calibration_batches=calibration if settings.precision == "int8" else (),
            )
        )
        artifact = built.plan
        metadata |= {
            "precision": settings.precision,
            "tensorrtVersion": built.tensorrt_version,
            "gpu": built.gpu.to_json(),
            "inputs": [t.to_json() for t in built.inputs],
            "outputs": [t.to_json() for t in built.outputs],
            "workspaceMib": settings.workspace_mib,
            "calibration": (
                {
                    "samples": sum(len(b) for b in calibration),
                    "batchSize": len(calibration[0]),
                    "batches": len(calibration),
                }
                if settings.precision == "int8"
                else None
            ),
        }
    else:
        # ONNX Runtime runs the exported fp32 graph as is; a requested fp16/int8 is recorded, not applied.
        artifact = onnx_bytes
        metadata |= {
            "precision": "fp32",
            "tensorrtVersion": None,
            "gpu": None,
            "inputs": [t.to_json() for t in inputs],
            "outputs": [t.to_json() for t in outputs],
            "workspaceMib": None,
            "calibration": None,
            "validation": validate_onnx(onnx_bytes, profiles, samples, settings.validation_tolerance),
        }
    key = ARTIFACT_KEYS[settings.target]
    metadata["artifact"] = {"key": key, "sha256": sha256_hex(artifact), "sizeBytes": len(artifact)}
    metadata["createdAt"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    output.write_atomic(key, artifact)
    output.write_atomic(METADATA_KEY, json.dumps(metadata, indent=2, sort_keys=True).encode())
    return {
        "artifacts": {"engine": output.uri(key), "metadata": output.uri(METADATA_KEY)},
        "engine": {
            "format": settings.target,
            "precision": metadata["precision"],
            "tensorrtVersion": metadata["tensorrtVersion"],
            "gpu": metadata["gpu"]["name"] if metadata["gpu"] else None,
            "computeCapability": metadata["gpu"]["computeCapability"] if metadata["gpu"] else None,
            "sizeBytes": len(artifact),
        },
    }
