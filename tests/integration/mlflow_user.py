"""What a data scientist runs against the registry: MLflow's own client, in its own environment
(.venv-mlflow: mlflow 3.17, onnx, onnxruntime), never the operator's code.

    python mlflow_user.py <tracking URI> <models:/ URI> <inputs.json>

Loads the model with `mlflow.onnx.load_model` and `mlflow.pyfunc.load_model`, runs both on the
inputs (a JSON list of samples), downloads it with `mlflow.artifacts.download_artifacts`, and prints
one JSON object: both outputs, the downloaded files, the signature and the input example.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import mlflow
import mlflow.onnx
import mlflow.pyfunc
import numpy as np
import onnxruntime as ort


def main() -> None:
    tracking_uri, model_uri, inputs_path = sys.argv[1:4]
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    with open(inputs_path) as f:
        inputs = np.asarray(json.load(f), dtype=np.float32)

    onnx_model = mlflow.onnx.load_model(model_uri)
    session = ort.InferenceSession(onnx_model.SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: inputs})

    pyfunc = mlflow.pyfunc.load_model(model_uri)
    predicted = pyfunc.predict(inputs)
    pyfunc_out = next(iter(predicted.values())) if isinstance(predicted, dict) else predicted
    signature = pyfunc.metadata.get_input_schema()
    example = pyfunc.metadata.load_input_example(model_uri)
    if isinstance(example, dict):  # a named tensor input comes back as {name: array}
        example = next(iter(example.values()))

    with tempfile.TemporaryDirectory() as folder:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=folder)
        files = sorted(
            os.path.relpath(os.path.join(root, name), local)
            for root, _, names in os.walk(local)
            for name in names
        )
    print(
        json.dumps(
            {
                "onnx": np.asarray(onnx_out).tolist(),
                "pyfunc": np.asarray(pyfunc_out).tolist(),
                "files": files,
                "inputSchema": signature.to_dict() if signature is not None else None,
                "outputSchema": pyfunc.metadata.get_output_schema().to_dict()
                if pyfunc.metadata.get_output_schema()
                else None,
                "inputExample": np.asarray(example).tolist() if example is not None else None,
                "modelId": pyfunc.metadata.model_id,
                "runId": pyfunc.metadata.run_id,
            },
            default=lambda value: np.asarray(value).tolist(),
        )
    )


if __name__ == "__main__":
    main()
