"""Loading a registered version the way a data scientist does: `mlflow_user.py` in the MLflow
server's own venv (mlflow, onnx, onnxruntime; none of the operator's code), and ONNX Runtime's
answer on the same inputs to compare with."""

from __future__ import annotations

import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from mlops_operator.dev.mlflow import LocalMlflow

ROOT = Path(__file__).resolve().parents[2]
MLFLOW_PYTHON = ROOT / ".venv-mlflow" / "bin" / "python"
USER_SCRIPT = Path(__file__).with_name("mlflow_user.py")


def load_as_a_user(server: LocalMlflow, model_uri: str, inputs: np.ndarray, tmp: Path) -> dict[str, Any]:
    """What mlflow.onnx.load_model and mlflow.pyfunc.load_model of `model_uri` answer on `inputs`,
    the files download_artifacts brings, the signature and the input example (mlflow_user.py)."""
    if not MLFLOW_PYTHON.exists():
        raise AssertionError(f"{MLFLOW_PYTHON} is missing: `make mlflow` (part of `make test`) installs it")
    path = tmp / f"inputs-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps(inputs.tolist()))
    done = subprocess.run(
        [str(MLFLOW_PYTHON), str(USER_SCRIPT), server.tracking_uri, model_uri, str(path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def reference(onnx: bytes, inputs: np.ndarray) -> np.ndarray:
    """ONNX Runtime's outputs of the model on `inputs`."""
    session = ort.InferenceSession(onnx, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: inputs})
    return np.asarray(out)
