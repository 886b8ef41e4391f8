"""Every call into TensorRT lives here (the `tensorrt` Python API, TensorRT 10).

TensorRT only installs on NVIDIA GPU images (the compile image's base ships it); this module is
imported lazily so everything else runs without it. Device memory comes from torch's CUDA
allocator, so no pycuda/cuda-python is needed. Tests fake exactly this boundary: the `tensorrt`
module, `device_buffer` and `gpu_info`.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ModelCheckError, TensorRTUnavailableError

Precision = str  # "fp32" | "fp16" | "int8"


@dataclass(frozen=True)
class ShapeRange:
    """One optimization-profile entry: the shapes an input may take (min <= opt <= max, per axis)."""

    input: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]  # -1 for a dynamic axis

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "computeCapability": self.compute_capability}


@dataclass(frozen=True)
class EngineRequest:
    onnx_bytes: bytes
    precision: Precision
    profiles: Sequence[ShapeRange]
    workspace_bytes: int
    calibration_batches: Sequence[npt.NDArray[np.float32]] = ()


@dataclass(frozen=True)
class BuiltEngine:
    plan: bytes
    tensorrt_version: str
    gpu: GpuInfo
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]


def import_tensorrt() -> ModuleType:
    try:
        return importlib.import_module("tensorrt")
    except ImportError as exc:
        raise TensorRTUnavailableError(
            "TensorRT is not installed in this image (import tensorrt failed: "
            f"{exc}); build engines in the GPU compile image, or use target 'onnx'"
        ) from exc


def gpu_info() -> GpuInfo:
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
        raise TensorRTUnavailableError("TensorRT needs a CUDA GPU and none is visible")
    major, minor = torch.cuda.get_device_capability()
    return GpuInfo(torch.cuda.get_device_name(), f"{major}.{minor}")


def device_buffer(batch: npt.NDArray[np.float32]) -> Any:
    """Copy a host batch to the GPU; the returned tensor must stay alive while TensorRT reads it."""
    import torch  # noqa: PLC0415

    return torch.from_numpy(np.ascontiguousarray(batch)).cuda()


def _make_calibrator(trt: ModuleType, batches: Sequence[npt.NDArray[np.float32]]) -> Any:
    """An entropy calibrator feeding fixed-size batches; TensorRT pulls them until get_batch returns None."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._pending = list(batches)
            self._current: Any = None
            self._cache: bytes | None = None
            self.batches_served = 0

        def get_batch_size(self) -> int:
            return int(batches[0].shape[0]) if batches else 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if not self._pending:
                return None
            self._current = device_buffer(self._pending.pop(0))
            self.batches_served += 1
            return [int(self._current.data_ptr())]

        def read_calibration_cache(self) -> bytes | None:
            return self._cache

        def write_calibration_cache(self, cache: Any) -> None:
            self._cache = bytes(cache)

    return EntropyCalibrator()


def _tensor_spec(tensor: Any) -> TensorSpec:
    return TensorSpec(str(tensor.name), str(tensor.dtype), tuple(int(d) for d in tensor.shape))


def build_engine(request: EngineRequest) -> BuiltEngine:
    trt = import_tensorrt()
    gpu = gpu_info()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(request.onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelCheckError(f"TensorRT could not parse the ONNX model: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, request.workspace_bytes)
    if request.precision in ("fp16", "int8"):
        config.set_flag(
            trt.BuilderFlag.FP16
        )  # int8 engines fall back to fp16 where a layer has no int8 kernel
    if request.precision == "int8":
        if not request.calibration_batches:
            raise ModelCheckError("int8 needs calibration data")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, request.calibration_batches)
        calibration_profile = builder.create_optimization_profile()
        shape = tuple(request.calibration_batches[0].shape)
        for shape_range in request.profiles:
            calibration_profile.set_shape(shape_range.input, shape, shape, shape)
        config.set_calibration_profile(calibration_profile)

    profile = builder.create_optimization_profile()
    for shape_range in request.profiles:
        profile.set_shape(shape_range.input, shape_range.min, shape_range.opt, shape_range.max)
    config.add_optimization_profile(profile)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelCheckError("TensorRT failed to build the engine (see the TensorRT log above)")
    return BuiltEngine(
        plan=bytes(plan),
        tensorrt_version=str(trt.__version__),
        gpu=gpu,
        inputs=tuple(_tensor_spec(network.get_input(i)) for i in range(network.num_inputs)),
        outputs=tuple(_tensor_spec(network.get_output(i)) for i in range(network.num_outputs)),
    )


class EngineRunner:
    """Runs a serialized engine on batches of host arrays (one input, one output)."""

    def __init__(self, plan: bytes) -> None:
        import torch  # noqa: PLC0415

        trt = import_tensorrt()
        self._torch = torch
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise ModelCheckError(
                "TensorRT could not deserialize the engine (built for another GPU or version?)"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelCheckError(f"expected one input and one output, engine has {inputs} and {outputs}")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]

    def run(self, batch: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        torch = self._torch
        # Copy in, execute and copy out on one stream so no step can overtake another.
        with torch.cuda.stream(self.stream):
            device_input = device_buffer(batch)
            self.context.set_input_shape(self.input_name, tuple(batch.shape))
            output_shape = tuple(self.context.get_tensor_shape(self.output_name))
            device_output = torch.empty(output_shape, dtype=torch.float32, device="cuda")
            self.context.set_tensor_address(self.input_name, int(device_input.data_ptr()))
            self.context.set_tensor_address(self.output_name, int(device_output.data_ptr()))
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise ModelCheckError("TensorRT execution failed")
            host_output = device_output.to("cpu", non_blocking=False)
        self.stream.synchronize()
        result: npt.NDArray[np.float32] = host_output.numpy()
        return result
