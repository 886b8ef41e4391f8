"""ONNX export of the trained model: parity with PyTorch in ONNX Runtime, and a dynamic batch axis."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mlops_trainer.dataset import load_split
from mlops_trainer.errors import ModelCheckError
from mlops_trainer.export import check_parity
from mlops_trainer.models import get_architecture
from mlops_trainer.storage import S3ObjectStore

from .support import BUCKET, DATASET_PREFIX, TrainerRun


def _read(s3_client: Any, key: str) -> bytes:
    body: bytes = s3_client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def test_exported_onnx_matches_pytorch_at_several_batch_sizes(
    reference_run: TrainerRun, s3_client: Any
) -> None:
    onnx_bytes = _read(s3_client, "models/reference/model.onnx")
    model = get_architecture("digits-cnn").build(10)
    model.load_state_dict(
        torch.load(io.BytesIO(_read(s3_client, "models/reference/model.pt")), weights_only=True)
    )
    model.eval()
    test = load_split(S3ObjectStore(BUCKET, DATASET_PREFIX, s3_client), "test")

    graph_input = onnx.load_from_string(onnx_bytes).graph.input[0]
    batch_axis = graph_input.type.tensor_type.shape.dim[0]
    assert graph_input.name == "images"
    assert batch_axis.dim_param, "batch axis must be symbolic"

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    worst = 0.0
    for size in (1, 5, 64, len(test)):
        batch = np.ascontiguousarray(test.features[:size])
        (actual,) = session.run(None, {"images": batch})
        with torch.no_grad():
            expected = model(torch.from_numpy(batch)).numpy()
        assert actual.shape == (size, 10)
        worst = max(worst, float(np.max(np.abs(actual - expected))))
    assert worst <= 1e-4
    # The trainer reported its own parity check, with the same bound.
    reported = reference_run.summary["onnxParity"]
    assert reported["maxAbsDiff"] <= reported["tolerance"] == 1e-4
    metadata = json.loads(_read(s3_client, "models/reference/metadata.json"))
    assert metadata["onnx"]["parity"]["passed"] is True


def test_parity_check_fails_above_tolerance(reference_run: TrainerRun, s3_client: Any) -> None:
    onnx_bytes = _read(s3_client, "models/reference/model.onnx")
    drifted = get_architecture("digits-cnn").build(10)
    drifted.load_state_dict(
        torch.load(io.BytesIO(_read(s3_client, "models/reference/model.pt")), weights_only=True)
    )
    last_layer = drifted.get_submodule("classifier.4")
    assert isinstance(last_layer, torch.nn.Linear)
    with torch.no_grad():
        last_layer.bias.add_(0.01)  # what a broken export would look like from outside
    features = np.random.default_rng(0).random((16, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ModelCheckError, match="max abs difference"):
        check_parity(drifted, onnx_bytes, features, tolerance=1e-4)
