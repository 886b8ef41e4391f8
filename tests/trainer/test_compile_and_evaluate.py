"""`compile` and `evaluate`.

The ONNX target runs end to end here (ONNX Runtime). The TensorRT target cannot: TensorRT does not
install on any machine of this project (PyPI only has stubs that download from NVIDIA's index). Its
tests therefore fake exactly one boundary, the `tensorrt` module plus the two device helpers of
`mlops_trainer.tensorrt_backend` (host-to-GPU copy, GPU name); everything around it - precision
flags, optimization profiles, workspace limit, calibration batching, metadata, upload - is the real
code. The fake records what the documented TensorRT 10 Python API was asked to do.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from mlops_trainer import tensorrt_backend
from mlops_trainer.compiler import CompileSettings, calibration_batches, compile_model, optimization_profiles
from mlops_trainer.errors import ConfigError, ExitCode, ModelCheckError
from mlops_trainer.tensorrt_backend import GpuInfo, ShapeRange, TensorSpec

from .support import BUCKET, DATASET_PREFIX, S3Server, TrainerRun, run_trainer, s3_uri, trainer_env

MODEL_URI = s3_uri("models/reference")


class FakeTensorRT(types.ModuleType):
    """Stands in for `import tensorrt` (TensorRT 10 API surface the backend uses); records the calls."""

    def __init__(self, parse_ok: bool = True) -> None:
        super().__init__("tensorrt")
        self.__version__ = "10.0.0-fake"
        self.parse_ok = parse_ok
        self.flags: set[str] = set()
        self.memory_limits: dict[str, int] = {}
        self.profiles: list[dict[str, tuple[tuple[int, ...], ...]]] = []
        self.calibration_profile: dict[str, tuple[tuple[int, ...], ...]] | None = None
        self.calibration_batch_size: int | None = None
        self.calibration_pointers: list[int] = []
        fake = self

        class Logger:
            WARNING = 2

            def __init__(self, level: int) -> None:
                self.level = level

        class IInt8EntropyCalibrator2:
            def __init__(self) -> None:
                pass

        class Tensor:
            def __init__(self, name: str, shape: tuple[int, ...]) -> None:
                self.name, self.shape, self.dtype = name, shape, "DataType.FLOAT"

        class Network:
            def __init__(self) -> None:
                self.inputs: list[Tensor] = []
                self.outputs: list[Tensor] = []

            num_inputs = property(lambda self: len(self.inputs))
            num_outputs = property(lambda self: len(self.outputs))

            def get_input(self, index: int) -> Tensor:
                return self.inputs[index]

            def get_output(self, index: int) -> Tensor:
                return self.outputs[index]

        class OnnxParser:
            def __init__(self, network: Network, logger: Logger) -> None:
                self.network = network
                self.num_errors = 0 if fake.parse_ok else 1

            def parse(self, data: bytes) -> bool:
                graph = onnx.load_from_string(data).graph

                def shape(value: Any) -> tuple[int, ...]:
                    return tuple(d.dim_value if d.dim_value else -1 for d in value.type.tensor_type.shape.dim)

                self.network.inputs = [Tensor(v.name, shape(v)) for v in graph.input]
                self.network.outputs = [Tensor(v.name, shape(v)) for v in graph.output]
                return fake.parse_ok

            def get_error(self, index: int) -> str:
                return "unsupported operator FakeOp"

        class Profile:
            def __init__(self) -> None:
                self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

            def set_shape(self, name: str, low: Any, mid: Any, high: Any) -> None:
                self.shapes[name] = (tuple(low), tuple(mid), tuple(high))

        class Config:
            int8_calibrator: Any = None

            def set_memory_pool_limit(self, pool: str, size: int) -> None:
                fake.memory_limits[pool] = size

            def set_flag(self, flag: str) -> None:
                fake.flags.add(flag)

            def add_optimization_profile(self, profile: Profile) -> int:
                fake.profiles.append(profile.shapes)
                return len(fake.profiles) - 1

            def set_calibration_profile(self, profile: Profile) -> None:
                fake.calibration_profile = profile.shapes

        class Builder:
            def __init__(self, logger: Logger) -> None:
                pass

            def create_network(self, flags: int) -> Network:
                return Network()

            def create_builder_config(self) -> Config:
                return Config()

            def create_optimization_profile(self) -> Profile:
                return Profile()

            def build_serialized_network(self, network: Network, config: Config) -> bytes:
                calibrator = config.int8_calibrator
                if calibrator is not None:  # TensorRT pulls batches until the calibrator returns None
                    fake.calibration_batch_size = calibrator.get_batch_size()
                    while (pointers := calibrator.get_batch(["images"])) is not None:
                        fake.calibration_pointers += pointers
                    calibrator.write_calibration_cache(b"cache")
                return b"FAKE-PLAN:" + ",".join(sorted(fake.flags)).encode()

        self.Logger = Logger
        self.IInt8EntropyCalibrator2 = IInt8EntropyCalibrator2
        self.OnnxParser = OnnxParser
        self.Builder = Builder
        self.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
        self.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")


class FakeDeviceBuffer:
    def __init__(self, batch: np.ndarray[Any, Any]) -> None:
        self.batch = batch

    def data_ptr(self) -> int:
        return id(self.batch)


@pytest.fixture
def fake_tensorrt(monkeypatch: pytest.MonkeyPatch, s3_server: S3Server) -> dict[str, Any]:
    trt = FakeTensorRT()
    copied: list[np.ndarray[Any, Any]] = []

    def device_buffer(batch: np.ndarray[Any, Any]) -> FakeDeviceBuffer:
        copied.append(batch)
        return FakeDeviceBuffer(batch)

    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(tensorrt_backend, "device_buffer", device_buffer)
    monkeypatch.setattr(tensorrt_backend, "gpu_info", lambda: GpuInfo("NVIDIA H100 80GB HBM3", "9.0"))
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    return {"trt": trt, "copied": copied}


def _read_json(s3_client: Any, key: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
    return result


def test_fp16_engine_sets_flag_workspace_and_dynamic_batch_profile(
    reference_run: TrainerRun, fake_tensorrt: dict[str, Any], s3_client: Any
) -> None:
    trt: FakeTensorRT = fake_tensorrt["trt"]
    result = compile_model(
        CompileSettings(MODEL_URI, s3_uri("engines/fp16"), target="tensorrt", precision="fp16",
                        max_batch_size=16, workspace_mib=256)
    )  # fmt: skip
    assert trt.flags == {"FP16"}
    assert trt.memory_limits == {"WORKSPACE": 256 * 1024 * 1024}
    assert trt.profiles == [{"images": ((1, 1, 8, 8), (16, 1, 8, 8), (16, 1, 8, 8))}]
    assert trt.calibration_profile is None
    assert fake_tensorrt["copied"] == []

    metadata = _read_json(s3_client, "engines/fp16/metadata.json")
    assert metadata["schema"] == "mlops.dev/engine-metadata/v1"
    assert (metadata["format"], metadata["precision"], metadata["tensorrtVersion"]) == (
        "tensorrt",
        "fp16",
        "10.0.0-fake",
    )
    assert metadata["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "computeCapability": "9.0"}
    assert metadata["inputs"] == [{"name": "images", "dtype": "DataType.FLOAT", "shape": [-1, 1, 8, 8]}]
    assert metadata["outputs"] == [{"name": "logits", "dtype": "DataType.FLOAT", "shape": [-1, 10]}]
    plan = s3_client.get_object(Bucket=BUCKET, Key="engines/fp16/model.plan")["Body"].read()
    assert plan == b"FAKE-PLAN:FP16"
    assert metadata["artifact"] == {
        "key": "model.plan",
        "sha256": metadata["artifact"]["sha256"],
        "sizeBytes": len(plan),
    }
    assert result["engine"]["gpu"] == "NVIDIA H100 80GB HBM3"
    assert result["engine"]["computeCapability"] == "9.0"
    assert metadata["source"]["metrics"]["accuracy"] == reference_run.summary["metrics"]["accuracy"]


def test_int8_engine_calibrates_with_fixed_size_batches_of_training_data(
    reference_run: TrainerRun, fake_tensorrt: dict[str, Any], s3_client: Any
) -> None:
    trt: FakeTensorRT = fake_tensorrt["trt"]
    compile_model(
        CompileSettings(MODEL_URI, s3_uri("engines/int8"), target="tensorrt", precision="int8",
                        max_batch_size=8, calibration_dataset_uri=s3_uri(DATASET_PREFIX),
                        calibration_max_samples=100, calibration_batch_size=32)
    )  # fmt: skip
    assert trt.flags == {"FP16", "INT8"}
    assert trt.calibration_batch_size == 32
    assert trt.calibration_profile == {"images": ((32, 1, 8, 8),) * 3}
    copied = fake_tensorrt["copied"]
    assert [b.shape for b in copied] == [(32, 1, 8, 8)] * 3  # 100 samples: 3 full batches, the 4 left dropped
    assert all(
        b.dtype == np.float32 and b.flags.c_contiguous and b.min() >= 0.0 and b.max() <= 1.0 for b in copied
    )
    assert trt.calibration_pointers == [id(b) for b in copied]
    metadata = _read_json(s3_client, "engines/int8/metadata.json")
    assert metadata["calibration"] == {"samples": 96, "batchSize": 32, "batches": 3}


def test_fp32_engine_sets_no_precision_flags(
    reference_run: TrainerRun, fake_tensorrt: dict[str, Any]
) -> None:
    compile_model(CompileSettings(MODEL_URI, s3_uri("engines/fp32"), target="tensorrt", precision="fp32"))
    assert fake_tensorrt["trt"].flags == set()


def test_unparseable_model_fails_with_the_parser_errors(
    reference_run: TrainerRun, fake_tensorrt: dict[str, Any]
) -> None:
    fake_tensorrt["trt"].parse_ok = False
    with pytest.raises(ModelCheckError, match="unsupported operator FakeOp"):
        compile_model(CompileSettings(MODEL_URI, s3_uri("engines/broken"), target="tensorrt"))


def test_profile_overrides_are_checked_against_the_model() -> None:
    inputs = [TensorSpec("images", "float32", (-1, 1, 8, 8))]
    good = ShapeRange("images", (2, 1, 8, 8), (4, 1, 8, 8), (8, 1, 8, 8))
    assert optimization_profiles(inputs, 8, [good]) == [good]
    bad = {
        "axis 2 is fixed at 8": ShapeRange("images", (1, 1, 9, 8), (4, 1, 8, 8), (8, 1, 8, 8)),
        "min <= opt <= max": ShapeRange("images", (4, 1, 8, 8), (2, 1, 8, 8), (8, 1, 8, 8)),
        "within 1..8": ShapeRange("images", (1, 1, 8, 8), (4, 1, 8, 8), (64, 1, 8, 8)),
        "unknown inputs": ShapeRange("pixels", (1, 1, 8, 8), (4, 1, 8, 8), (8, 1, 8, 8)),
    }
    for message, shape_range in bad.items():
        with pytest.raises(ConfigError, match=message):
            optimization_profiles(inputs, 8, [shape_range])


def test_calibration_batching() -> None:
    features = np.arange(10 * 4, dtype=np.float64).reshape(10, 4)
    batches = calibration_batches(features, batch_size=4, max_samples=9)
    assert [b.shape for b in batches] == [(4, 4), (4, 4)]
    assert all(b.dtype == np.float32 for b in batches)
    assert [b.shape for b in calibration_batches(features, batch_size=32, max_samples=512)] == [(10, 4)]


def test_compile_to_tensorrt_without_tensorrt_fails_permanently_and_says_what_to_do(
    reference_run: TrainerRun, s3_server: S3Server, tmp_path: Path
) -> None:
    run = run_trainer(
        ["compile", "--model-uri", MODEL_URI, "--output-uri", s3_uri("engines/none"), "--target", "tensorrt"],
        trainer_env(s3_server),
        tmp_path,
    )
    assert run.returncode == ExitCode.CONFIG
    assert run.summary["reason"] == "TensorRTUnavailable"
    assert run.summary["retryable"] is False
    assert "use target 'onnx'" in run.summary["message"]


def test_onnx_target_compiles_and_evaluates_end_to_end(
    reference_run: TrainerRun, s3_server: S3Server, s3_client: Any, tmp_path: Path
) -> None:
    env = trainer_env(s3_server)
    compiled = run_trainer(
        ["compile", "--model-uri", MODEL_URI, "--output-uri", s3_uri("engines/onnx"), "--target", "onnx",
         "--precision", "fp16", "--max-batch-size", "32"],
        env, tmp_path / "compile",
    )  # fmt: skip
    assert compiled.returncode == 0, compiled.stderr[-3000:]
    assert compiled.summary["engine"] == {
        "format": "onnx", "precision": "fp32", "tensorrtVersion": None, "gpu": None,
        "computeCapability": None,
        "sizeBytes": compiled.summary["engine"]["sizeBytes"],
    }  # fmt: skip
    metadata = _read_json(s3_client, "engines/onnx/metadata.json")
    assert metadata["requestedPrecision"] == "fp16"  # recorded, not applied: ONNX Runtime runs fp32
    assert metadata["validation"]["batchSizes"] == [1, 32]
    assert metadata["validation"]["maxAbsDiff"] <= 1e-4
    assert metadata["profiles"] == [
        {"input": "images", "min": [1, 1, 8, 8], "opt": [32, 1, 8, 8], "max": [32, 1, 8, 8]}
    ]

    evaluated = run_trainer(
        ["evaluate", "--engine-uri", s3_uri("engines/onnx"), "--dataset-uri", s3_uri(DATASET_PREFIX),
         "--warmup-batches", "5", "--latency-batches", "50"],
        env, tmp_path / "evaluate",
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert len(evaluated.termination_bytes) <= 4096
    metrics = evaluated.summary["metrics"]
    # The compiled model scores what the trained one scored on the same held-out split.
    assert metrics["accuracy"] == pytest.approx(reference_run.summary["metrics"]["accuracy"], abs=1e-9)
    assert 0 < metrics["latency_p50_ms"] <= metrics["latency_p95_ms"] <= metrics["latency_p99_ms"]
    assert metrics["size_bytes"] == compiled.summary["engine"]["sizeBytes"]
    assert evaluated.summary["evaluation"]["samples"] == 360
    assert evaluated.summary["evaluation"]["latencyBatches"] == 50
