"""ONNX export with a dynamic batch axis, checked against PyTorch with ONNX Runtime."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .errors import ModelCheckError

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
OPSET = 18
MAX_EXPORT_BATCH = 4096


@dataclass(frozen=True)
class ParityReport:
    max_abs_diff: float
    tolerance: float
    batch_sizes: tuple[int, ...]
    samples: int

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance

    def to_json(self) -> dict[str, object]:
        return {
            "maxAbsDiff": self.max_abs_diff,
            "tolerance": self.tolerance,
            "batchSizes": list(self.batch_sizes),
            "samples": self.samples,
            "passed": self.passed,
        }


def export_onnx(model: nn.Module, sample_shape: Sequence[int]) -> bytes:
    """Export `model` (moved to CPU, fp32, eval mode) with the batch axis dynamic."""
    model = model.to("cpu", torch.float32).eval()
    example = torch.zeros((2, *sample_shape), dtype=torch.float32)
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter is not actionable here
        # The exporter logs its passes at INFO and absent optional torchvision ops at WARNING.
        for noisy in ("torch.onnx", "onnxscript", "onnx_ir"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=OPSET,
            dynamo=True,
            verbose=False,
        )
    if program is None:
        raise ModelCheckError("torch.onnx.export returned no program")
    data: bytes = program.model_proto.SerializeToString()
    return data


def onnx_session(onnx_bytes: bytes, *, prefer_gpu: bool = False) -> object:
    import onnxruntime as ort  # noqa: PLC0415

    providers = ["CPUExecutionProvider"]
    if prefer_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, sess_options=options, providers=providers)


def check_parity(
    model: nn.Module,
    onnx_bytes: bytes,
    features: npt.NDArray[np.float32],
    *,
    tolerance: float,
    batch_sizes: Sequence[int] = (1, 7, 64),
) -> ParityReport:
    """Largest |onnxruntime - pytorch| over real samples at several batch sizes (proves the dynamic axis)."""
    model = model.to("cpu", torch.float32).eval()
    session = onnx_session(onnx_bytes)
    worst = 0.0
    used: list[int] = []
    samples = 0
    for size in batch_sizes:
        batch = np.ascontiguousarray(features[: min(size, len(features))], dtype=np.float32)
        if not len(batch):
            continue
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        (actual,) = session.run([OUTPUT_NAME], {INPUT_NAME: batch})  # type: ignore[attr-defined]
        if actual.shape != expected.shape:
            raise ModelCheckError(f"ONNX output shape {actual.shape} differs from PyTorch {expected.shape}")
        worst = max(worst, float(np.max(np.abs(actual - expected))))
        used.append(len(batch))
        samples += len(batch)
    report = ParityReport(worst, tolerance, tuple(used), samples)
    if not report.passed:
        raise ModelCheckError(
            f"ONNX parity failed: max abs difference {report.max_abs_diff:.3g} "
            f"exceeds tolerance {tolerance:.3g}"
        )
    return report
