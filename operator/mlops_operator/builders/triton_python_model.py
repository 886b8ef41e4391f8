"""The `model.py` of the python-backend variant: an ONNX model served by Triton's python backend.

Not imported by the operator: `builders.triton` ships this file's text as `<model>/<version>/model.py`
of a repository for CPU-only serving where the tritonserver has no ONNX Runtime backend. It runs inside
Triton's python backend stub, which provides `triton_python_backend_utils`; `onnxruntime` and numpy
must be importable there (this project's .venv-triton; in a Triton image, an execution environment).

One `execute` call gets every request the dynamic batcher gathered: their inputs are concatenated
along the batch axis and run through ONNX Runtime once, which is what batching buys on a CPU.

Failures, and how Triton counts them (checked on tritonserver 2.51):
- a request whose input holds NaN or infinity gets an error response of its own and is left out of
  the batch, so one client cannot fail the requests batched with its own. Triton counts error
  responses of the python backend as successes, as it does not count requests it refused itself
  (wrong shape, dtype or name): client errors stay out of `nv_inference_request_failure`;
- a model that fails (ONNX Runtime raises, or answers NaN or infinity to finite inputs) raises, and
  Triton fails every request of that batch and counts each one in `nv_inference_request_failure`
  (reason BACKEND): the server-side failures a canary analysis must see.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped,import-not-found,unused-ignore]
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found,unused-ignore]

# The file next to this one in the model's version folder (builders.triton places it there).
ONNX_FILE = "model.onnx"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.inputs = [(t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["input"]]
        self.outputs = [
            (t["name"], pb_utils.triton_string_to_numpy(t["data_type"])) for t in config["output"]
        ]
        # With max_batch_size 0 the batch axis (if any) is part of each request's own shape.
        self.batched = int(config.get("max_batch_size", 0)) > 0
        path = Path(args["model_repository"]) / args["model_version"] / ONNX_FILE
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = {o.name for o in self.session.get_outputs()}
        missing = [name for name, _ in self.outputs if name not in names]
        if missing:
            raise pb_utils.TritonModelException(f"{path} has no output(s) {missing}; it has {sorted(names)}")
        self.output_names = [name for name, _ in self.outputs]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses: list[Any] = [None] * len(requests)
        valid: list[tuple[int, dict[str, npt.NDArray[Any]]]] = []
        for index, request in enumerate(requests):
            feeds = {
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(dtype, copy=False)
                for name, dtype in self.inputs
            }
            bad = [name for name, a in feeds.items() if a.dtype.kind in "fc" and not np.isfinite(a).all()]
            if bad:
                error = pb_utils.TritonError(f"input {bad[0]!r} holds NaN or infinity")
                responses[index] = pb_utils.InferenceResponse(error=error)
            else:
                valid.append((index, feeds))
        for index, outputs in self._run(valid):
            tensors = []
            for (name, dtype), value in zip(self.outputs, outputs, strict=True):
                if value.dtype.kind in "fc" and not np.isfinite(value).all():
                    # A model answering NaN to finite inputs is broken: fail (and count) the batch.
                    raise pb_utils.TritonModelException(f"the model produced NaN or infinity in {name!r}")
                tensors.append(pb_utils.Tensor(name, np.ascontiguousarray(value.astype(dtype, copy=False))))
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses

    def _run(
        self, valid: list[tuple[int, dict[str, npt.NDArray[Any]]]]
    ) -> list[tuple[int, list[npt.NDArray[Any]]]]:
        """Each valid request's outputs: one ONNX Runtime call for the whole batch where the shapes allow."""
        if not valid:
            return []
        if self.batched and len(valid) > 1:
            sizes = [len(next(iter(feeds.values()))) for _, feeds in valid]
            try:
                joined = {
                    name: np.concatenate([feeds[name] for _, feeds in valid]) for name, _ in self.inputs
                }
            except ValueError:  # variable non-batch dims: requests cannot share one call
                pass
            else:
                outputs = self.session.run(self.output_names, joined)
                bounds = np.cumsum([0, *sizes])
                return [
                    (index, [out[bounds[i] : bounds[i + 1]] for out in outputs])
                    for i, (index, _) in enumerate(valid)
                ]
        return [(index, list(self.session.run(self.output_names, feeds))) for index, feeds in valid]
