"""Pure builder of the Triton model repository that serves one compiled model (no I/O).

Input: the engine's `metadata.json` (schema mlops.dev/engine-metadata/v1, written by the trainer's
`compile`), the engine's URI, and the InferenceDeployment's `spec.triton` and GPU count. Output: a
`ModelRepository`: `<model>/config.pbtxt` (+ `<model>/<version>/model.py` for the python variant),
the engine placed by reference at `<model>/<version>/model.plan|model.onnx`, and a content-addressed
digest. `<version>` is the ModelVersion's serving version (`triton_model_version`): Triton reports it
as a response's `model_version` and as the `version` label of its metrics.

Which Triton backend serves it:

| engine | resources.gpus | config.pbtxt | instances |
|---|---|---|---|
| tensorrt (`model.plan`) | > 0 | `platform: "tensorrt_plan"` | KIND_GPU |
| tensorrt | 0 | refused (`TritonBuildError`): a plan runs on the GPU it was built for only | |
| onnx (`model.onnx`) | > 0 | `platform: "onnxruntime_onnx"` | KIND_GPU |
| onnx | 0, `cpu_backend="onnxruntime"` | `platform: "onnxruntime_onnx"` | KIND_CPU |
| onnx | 0, `cpu_backend="python"` | `backend: "python"` + `model.py` (runs it with onnxruntime) | KIND_CPU |

`cpu_backend` is explicit because it depends on the tritonserver, not on the model: Triton's images
(`nvcr.io/nvidia/tritonserver:<yy.mm>-py3`) have the ONNX Runtime backend, so "onnxruntime" is right
there; the tritonserver in the `nvidia-pytriton` wheel that tests and `mlopsctl dev` run has only the
python backend, so they ask for "python" (whose model.py needs `onnxruntime` importable by the stub).

Publication (where the repository lives, and how Triton gets it). The operator writes the small
files and a `repository.json` manifest (`mlops_contract.modelrepository`: the files with their
sha256, and the engine by URI + sha256) under a content-addressed prefix,
`<base>/triton/<model>/<digest[:16]>/`, with the tenant's S3 credentials; the manifest is written
last, so its presence means the prefix is complete, and an unchanged repository is never rewritten.
The serving pod's init container (the trainer image, `mlops-trainer fetch-model-repository`)
materializes the repository on an emptyDir, checking every sha256, and tritonserver loads it from
local disk. Why not Triton's own S3 repository (`--model-repository=s3://...`):
- Triton loads a model folder from one prefix, so the engine would have to be copied under every
  repository prefix: a copy of a multi-GB object per config change, where the manifest references it;
- Triton's S3 client has its own credentials and endpoint handling (a custom endpoint goes into the
  path as `s3://host:port/bucket/...`, credentials only from its own env vars or a credential file),
  while the init container reuses the workloads' S3 code and env contract (AWS_ENDPOINT_URL_S3, keys
  from the tenant's Secret, or the pod's web identity), tested against this project's S3;
- nothing is verified: the init container checks the engine's sha256 against the ModelVersion's, so a
  replaced object cannot be served silently;
- the tritonserver of a given image may be built without S3 support. The one bundled in
  nvidia-pytriton 0.7.0 (2.51) does have it (its libtritonserver links the AWS SDK's S3 client, and it
  loads this project's repositories from moto's S3): the choice rests on the three reasons above.

The digest covers the files, the engine's path, URI, sha256 and size, and the model's name: a changed
config, serving code or engine gets a new prefix, an unchanged one the same prefix.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from mlops_contract.modelrepository import (
    MANIFEST_KEY,
    PREFIX_DIGITS,
    RepositoryArtifact,
    RepositoryFile,
    RepositoryManifest,
)

from ..api.v1alpha1.inferencedeployment import Triton

ENGINE_METADATA_SCHEMA = "mlops.dev/engine-metadata/v1"
CpuBackend = Literal["onnxruntime", "python"]
InstanceKind = Literal["KIND_GPU", "KIND_CPU"]
# Where tritonserver listens in a serving pod (Triton's defaults).
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
# Triton names a model after its folder; keep to characters that need no quoting anywhere (a path,
# a URL, a Prometheus label value in a PromQL string).
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ARTIFACT_FILES = {"tensorrt": "model.plan", "onnx": "model.onnx"}
# Triton's version of a model served without a registry version to follow.
DEFAULT_TRITON_VERSION = 1
_MLFLOW_VERSION = re.compile(r"^[0-9]{1,18}$")
_WANDB_VERSION = re.compile(r"^v([0-9]{1,18})$")
PYTHON_MODEL_FILE = "model.py"
# The python variant's model.py: a real module of this package (linted and type-checked), shipped as text.
PYTHON_MODEL_SOURCE = (
    resources.files("mlops_operator.builders").joinpath("triton_python_model.py").read_bytes()
)

# Engine dtypes as the trainer writes them: numpy names (ONNX export) or TensorRT's `str(DataType.X)`.
_NUMPY_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16",
    "string": "TYPE_STRING",
    "object": "TYPE_STRING",
}
_TENSORRT_TYPES = {
    "FLOAT": "TYPE_FP32",
    "HALF": "TYPE_FP16",
    "BF16": "TYPE_BF16",
    "INT8": "TYPE_INT8",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
}


def triton_model_version(registry_version: str | None) -> int:
    """Triton's version number for a ModelVersion registered as `registry_version` (its
    status.registry.version), so that a response's `model_version`, the `version` label of Triton's
    metrics and the registry's version name the same thing:

    - MLflow's "N" (versions count from 1) -> N, as in `models:/<name>/N`;
    - W&B's "vN" (versions count from v0) -> N + 1, so v0 is Triton 1 and v3 is 4. Triton's model
      repository docs ("Model Versions") say "The subdirectories that are not numerically named, or
      have names that start with the character "0" will be ignored": a folder `0` is outside the
      documented contract. (tritonserver 2.51, the nvidia-pytriton 0.7.0 build, does load a lone
      `0` and answers as version 0, but ignores `07`, whose model then fails to load; what the docs
      rule out is not relied on, on any Triton image);
    - no registry, or a version of neither form -> 1 (`DEFAULT_TRITON_VERSION`).

    Up to 18 digits (Triton's versions are int64). ModelVersion status.servingVersion records the
    number at registration; this function is the fallback for versions registered before it did.
    """
    version = (registry_version or "").strip()
    if _MLFLOW_VERSION.match(version) and int(version) >= 1:
        return int(version)
    found = _WANDB_VERSION.match(version)
    if found:
        return int(found.group(1)) + 1
    return DEFAULT_TRITON_VERSION


class TritonBuildError(ValueError):
    """The engine cannot be served as asked (a person can act on the message): e.g. a TensorRT plan
    with no GPU, a dtype Triton has no type for, metadata of another schema."""


@dataclass(frozen=True)
class TensorConfig:
    name: str
    data_type: str  # TYPE_FP32 ...
    dims: tuple[int, ...]  # without the batch axis when max_batch_size > 0; -1 for a variable axis
    # Set when the engine's tensor has no axis but the batch one: Triton needs dims [1], reshaped to [].
    reshape_to_scalar: bool = False


@dataclass(frozen=True)
class ModelRepository:
    """One model's Triton repository: small files by content, the engine by reference."""

    model: str
    version: int  # Triton's version of the model: the folder under <model>/ that holds the engine
    platform: str  # tensorrt_plan, onnxruntime_onnx, or python (a backend)
    instance_kind: InstanceKind
    max_batch_size: int
    inputs: tuple[TensorConfig, ...]
    outputs: tuple[TensorConfig, ...]
    # repository path -> content: <model>/config.pbtxt, <model>/<version>/model.py
    files: Mapping[str, bytes]
    # the engine at <model>/<version>/model.plan|model.onnx, fetched by URI + sha256
    artifact: RepositoryArtifact
    # What differs from the spec and why (e.g. preferred batch sizes above the engine's maximum).
    notes: tuple[str, ...] = ()

    @property
    def manifest(self) -> RepositoryManifest:
        files = tuple(
            RepositoryFile(path, hashlib.sha256(data).hexdigest(), len(data))
            for path, data in sorted(self.files.items())
        )
        return RepositoryManifest(self.model, files, self.artifact)

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def manifest_bytes(self) -> bytes:
        """repository.json: written last under `repository_uri(...)`."""
        return self.manifest.encode()


def repository_uri(base_uri: str, repository: ModelRepository) -> str:
    """`<base>/triton/<model>/<digest[:16]>/`: the content-addressed prefix of one repository."""
    return f"{base_uri.rstrip('/')}/triton/{repository.model}/{repository.digest[:PREFIX_DIGITS]}/"


def manifest_uri(base_uri: str, repository: ModelRepository) -> str:
    return repository_uri(base_uri, repository) + MANIFEST_KEY


def build_model_repository(
    model: str,
    engine_metadata: Mapping[str, Any],
    artifact_uri: str,
    triton: Triton,
    gpus: int,
    *,
    cpu_backend: CpuBackend = "onnxruntime",
    version: int = DEFAULT_TRITON_VERSION,
) -> ModelRepository:
    """The repository serving the engine at `artifact_uri` (ModelVersion status.engine.uri), described by
    `engine_metadata` (its metadata.json), as `spec.triton` and `spec.resources.gpus` ask.

    `model` is Triton's model name (metrics label `model`, URL /v2/models/<model>); `version` its
    version number (`triton_model_version`: metrics label `version`, a response's `model_version`).
    `cpu_backend` applies to ONNX engines on CPU only (`gpus == 0`); see the module docstring.
    """
    if not MODEL_NAME.match(model):
        raise TritonBuildError(f"model name {model!r} must match {MODEL_NAME.pattern}")
    if isinstance(version, bool) or not 1 <= version < 2**63:
        raise TritonBuildError(f"Triton model version {version!r} is not a positive int64")
    schema = engine_metadata.get("schema")
    if schema != ENGINE_METADATA_SCHEMA:
        raise TritonBuildError(f"engine metadata has schema {schema!r}, expected {ENGINE_METADATA_SCHEMA}")
    engine_format = str(engine_metadata.get("format"))
    if engine_format not in _ARTIFACT_FILES:
        raise TritonBuildError(f"engine format {engine_format!r} is neither tensorrt nor onnx")
    artifact_meta = engine_metadata.get("artifact") or {}
    key = str(artifact_meta.get("key", ""))
    if not key or not artifact_uri.endswith("/" + key):
        raise TritonBuildError(f"engine URI {artifact_uri!r} does not end in the metadata's artifact {key!r}")

    platform, kind = _platform(engine_format, gpus, cpu_backend)
    inputs_meta = _tensors(engine_metadata, "inputs")
    outputs_meta = _tensors(engine_metadata, "outputs")
    notes: list[str] = []
    max_batch = _max_batch_size(triton, engine_metadata, [*inputs_meta, *outputs_meta], notes)
    inputs = tuple(_tensor_config(t, max_batch) for t in inputs_meta)
    outputs = tuple(_tensor_config(t, max_batch) for t in outputs_meta)
    preferred = sorted({b for b in triton.dynamic_batching.preferred_batch_sizes if b <= max_batch})
    dropped = sorted(set(triton.dynamic_batching.preferred_batch_sizes) - set(preferred))
    if dropped and max_batch > 0:
        notes.append(f"preferred batch sizes {dropped} exceed max_batch_size {max_batch} and were left out")
    batching = triton.dynamic_batching.enabled and max_batch > 0
    if triton.dynamic_batching.enabled and max_batch == 0:
        notes.append("dynamic batching needs max_batch_size > 0 and was left out")

    config = render_config(
        model=model,
        platform=platform,
        max_batch_size=max_batch,
        inputs=inputs,
        outputs=outputs,
        instance_count=triton.instance_count,
        instance_kind=kind,
        preferred_batch_sizes=preferred if batching else None,
        max_queue_delay_microseconds=triton.dynamic_batching.max_queue_delay_microseconds,
        dynamic_batching=batching,
    )
    files = {f"{model}/config.pbtxt": config.encode()}
    if platform == "python":
        files[f"{model}/{version}/{PYTHON_MODEL_FILE}"] = PYTHON_MODEL_SOURCE
    artifact = RepositoryArtifact(
        path=f"{model}/{version}/{_ARTIFACT_FILES[engine_format]}",
        uri=artifact_uri,
        sha256=str(artifact_meta.get("sha256", "")),
        size_bytes=int(artifact_meta.get("sizeBytes", 0)),
    )
    if not re.fullmatch(r"[0-9a-f]{64}", artifact.sha256):
        raise TritonBuildError(f"engine metadata has no sha256 for {key!r}")
    return ModelRepository(
        model=model,
        version=version,
        platform=platform,
        instance_kind=kind,
        max_batch_size=max_batch,
        inputs=inputs,
        outputs=outputs,
        files=files,
        artifact=artifact,
        notes=tuple(notes),
    )


def tritonserver_args(
    repository_dir: str,
    *,
    http_port: int = HTTP_PORT,
    grpc_port: int = GRPC_PORT,
    metrics_port: int = METRICS_PORT,
) -> list[str]:
    """tritonserver's arguments for a repository materialized at `repository_dir` (the serving
    container's args; `dev.triton.tritonserver_command` runs the same ones as a local process)."""
    return [
        f"--model-repository={repository_dir}",
        f"--http-port={http_port}",
        f"--grpc-port={grpc_port}",
        f"--metrics-port={metrics_port}",
        # p50..p99.9 request latencies (nv_inference_request_summary_us): the analysis's p95.
        "--metrics-config=summary_latencies=true",
        # Ready only when every model loaded; a model that fails to load stops the server (no pod
        # that passes readiness without its model).
        "--strict-readiness=true",
        "--exit-on-error=true",
        # The repository is fixed for the pod's life: a new version is a new pod (the canary).
        "--model-control-mode=none",
    ]


def _platform(engine_format: str, gpus: int, cpu_backend: CpuBackend) -> tuple[str, InstanceKind]:
    if engine_format == "tensorrt":
        if gpus < 1:
            raise TritonBuildError(
                "a TensorRT engine runs on a GPU only (of the product it was built for); resources.gpus is 0"
            )
        return "tensorrt_plan", "KIND_GPU"
    if gpus > 0:
        return "onnxruntime_onnx", "KIND_GPU"
    return ("python" if cpu_backend == "python" else "onnxruntime_onnx"), "KIND_CPU"


def _tensors(metadata: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    tensors = metadata.get(field)
    if not isinstance(tensors, list) or not tensors:
        raise TritonBuildError(f"engine metadata lists no {field}")
    for tensor in tensors:
        if (
            not isinstance(tensor, Mapping)
            or not tensor.get("name")
            or not isinstance(tensor.get("shape"), list)
        ):
            raise TritonBuildError(f"engine metadata {field} entry {tensor!r} lacks a name or shape")
        if not tensor["shape"]:
            raise TritonBuildError(f"{field} {tensor['name']!r} has no axes (not even the batch axis)")
    return list(tensors)


def _max_batch_size(
    triton: Triton, metadata: Mapping[str, Any], tensors: Sequence[Mapping[str, Any]], notes: list[str]
) -> int:
    """min(spec, engine); 0 (no batching by Triton) when any tensor's first axis is not a variable batch."""
    engine_max = int(metadata.get("maxBatchSize") or 0)
    fixed = [str(t["name"]) for t in tensors if int(t["shape"][0]) != -1]
    if fixed:
        notes.append(f"tensors {fixed} have a fixed first axis: no batching by Triton (max_batch_size 0)")
        return 0
    wanted = min(triton.max_batch_size, engine_max) if engine_max > 0 else triton.max_batch_size
    if wanted < triton.max_batch_size:
        notes.append(f"max_batch_size {triton.max_batch_size} lowered to the engine's {engine_max}")
    return wanted


def _data_type(dtype: str) -> str:
    name = dtype.removeprefix("DataType.")
    found = _TENSORRT_TYPES.get(name) or _NUMPY_TYPES.get(name.lower())
    if found is None:
        raise TritonBuildError(f"no Triton data type for the engine's dtype {dtype!r}")
    return found


def _tensor_config(tensor: Mapping[str, Any], max_batch_size: int) -> TensorConfig:
    shape = tuple(int(d) for d in tensor["shape"])
    dims = shape[1:] if max_batch_size > 0 else shape
    return TensorConfig(
        name=str(tensor["name"]),
        data_type=_data_type(str(tensor.get("dtype", ""))),
        dims=dims or (1,),
        reshape_to_scalar=not dims,
    )


def _quote(text: str) -> str:
    """A protobuf text-format string literal."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _tensor_block(tensors: Sequence[TensorConfig]) -> list[str]:
    lines = []
    for i, t in enumerate(tensors):
        reshape = " reshape: { shape: [ ] }" if t.reshape_to_scalar else ""
        comma = "," if i < len(tensors) - 1 else ""
        dims = ", ".join(str(d) for d in t.dims)
        lines.append(
            f"  {{ name: {_quote(t.name)} data_type: {t.data_type} dims: [ {dims} ]{reshape} }}{comma}"
        )
    return lines


def render_config(
    *,
    model: str,
    platform: str,
    max_batch_size: int,
    inputs: Sequence[TensorConfig],
    outputs: Sequence[TensorConfig],
    instance_count: int,
    instance_kind: InstanceKind,
    dynamic_batching: bool,
    preferred_batch_sizes: Sequence[int] | None,
    max_queue_delay_microseconds: int,
) -> str:
    """config.pbtxt (protobuf text format of Triton's ModelConfig); the same input gives the same bytes."""
    lines = [f"name: {_quote(model)}"]
    # `platform` names a framework backend by its model format; the python backend is named as a backend.
    lines.append(f"backend: {_quote(platform)}" if platform == "python" else f"platform: {_quote(platform)}")
    lines += [f"max_batch_size: {max_batch_size}", "input ["]
    lines += _tensor_block(inputs)
    lines += ["]", "output ["]
    lines += _tensor_block(outputs)
    lines.append("]")
    if dynamic_batching:
        lines.append("dynamic_batching {")
        if preferred_batch_sizes:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred_batch_sizes)} ]")
        lines += [f"  max_queue_delay_microseconds: {max_queue_delay_microseconds}", "}"]
    lines += [
        f"instance_group [ {{ count: {instance_count} kind: {instance_kind} }} ]",
        "version_policy: { latest: { num_versions: 1 } }",
    ]
    return "\n".join(lines) + "\n"
