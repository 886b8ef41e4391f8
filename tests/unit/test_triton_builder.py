"""The Triton model repository builder (`builders.triton`): config.pbtxt per engine format and serving
device, the content-addressed digest, and the manifest both sides of the contract read.

Every config.pbtxt is also parsed with Triton's own ModelConfig protobuf (tritonclient ships it), so
a field name or value Triton would refuse fails here; tests/integration/test_triton_serving.py loads
the python variant into a real tritonserver.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from mlops_contract.modelrepository import ManifestError, RepositoryManifest
from tritonclient.grpc import model_config_pb2

from mlops_operator.api.v1alpha1.inferencedeployment import Triton
from mlops_operator.builders import triton as builder
from mlops_operator.builders.triton import (
    TritonBuildError,
    build_model_repository,
    repository_uri,
    tritonserver_args,
)

ONNX_URI = "s3://models/engines/digits-v1/model.onnx"
PLAN_URI = "s3://models/engines/digits-v1-trt/model.plan"
SHA = "9c30a17f788efc21f43d666c8ac41ccaae5969ec552d506abfecee36ff4e115e"


def onnx_metadata(max_batch_size: int = 16) -> dict[str, Any]:
    """What `mlops-trainer compile --target onnx` writes for the digits model (fields the builder reads)."""
    return {
        "schema": "mlops.dev/engine-metadata/v1",
        "format": "onnx",
        "maxBatchSize": max_batch_size,
        "precision": "fp32",
        "gpu": None,
        "inputs": [{"name": "images", "dtype": "float32", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "float32", "shape": [-1, 10]}],
        "artifact": {"key": "model.onnx", "sha256": SHA, "sizeBytes": 620029},
    }


def tensorrt_metadata() -> dict[str, Any]:
    """`compile --target tensorrt`: TensorRT names dtypes `DataType.X` (as tests/trainer/ asserts)."""
    return {
        "schema": "mlops.dev/engine-metadata/v1",
        "format": "tensorrt",
        "maxBatchSize": 32,
        "precision": "fp16",
        "gpu": {"name": "NVIDIA H100 80GB HBM3", "computeCapability": "9.0"},
        "inputs": [{"name": "images", "dtype": "DataType.FLOAT", "shape": [-1, 1, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "DataType.HALF", "shape": [-1, 10]}],
        "artifact": {"key": "model.plan", "sha256": "ab" * 32, "sizeBytes": 123456},
    }


def triton(**wire: Any) -> Triton:
    return Triton.model_validate(wire)


def parsed(config: bytes) -> Any:
    """config.pbtxt through Triton's ModelConfig schema: unknown fields or bad enum values raise."""
    return text_format.Parse(config.decode(), model_config_pb2.ModelConfig())


def test_onnx_on_cpu_python_variant_is_the_python_backend_with_its_model_py() -> None:
    spec = triton(maxBatchSize=8, instanceCount=2, dynamicBatching={"preferredBatchSizes": [4, 8]})
    repo = build_model_repository("digits", onnx_metadata(), ONNX_URI, spec, 0, cpu_backend="python")

    assert repo.files["digits/config.pbtxt"].decode() == (
        'name: "digits"\n'
        'backend: "python"\n'
        "max_batch_size: 8\n"
        "input [\n"
        '  { name: "images" data_type: TYPE_FP32 dims: [ 1, 8, 8 ] }\n'
        "]\n"
        "output [\n"
        '  { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] }\n'
        "]\n"
        "dynamic_batching {\n"
        "  preferred_batch_size: [ 4, 8 ]\n"
        "  max_queue_delay_microseconds: 100\n"
        "}\n"
        "instance_group [ { count: 2 kind: KIND_CPU } ]\n"
        "version_policy: { latest: { num_versions: 1 } }\n"
    )
    config = parsed(repo.files["digits/config.pbtxt"])
    assert (config.backend, config.platform, config.max_batch_size) == ("python", "", 8)
    assert list(config.input[0].dims) == [1, 8, 8]  # no batch axis: max_batch_size > 0
    assert list(config.output[0].dims) == [10]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert config.version_policy.latest.num_versions == 1
    # model.py is the package's module, byte for byte, beside where the engine goes.
    source = Path(builder.__file__).with_name("triton_python_model.py").read_bytes()
    assert repo.files["digits/1/model.py"] == source
    assert set(repo.files) == {"digits/config.pbtxt", "digits/1/model.py"}
    assert (repo.artifact.path, repo.artifact.uri, repo.artifact.sha256) == (
        "digits/1/model.onnx",
        ONNX_URI,
        SHA,
    )
    assert (repo.platform, repo.instance_kind, repo.notes) == ("python", "KIND_CPU", ())


def test_onnx_on_gpu_is_onnxruntime_on_gpu_instances_without_model_py() -> None:
    repo = build_model_repository("digits", onnx_metadata(), ONNX_URI, triton(), 1, cpu_backend="python")
    config = parsed(repo.files["digits/config.pbtxt"])
    assert (config.platform, config.backend) == ("onnxruntime_onnx", "")
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.instance_group[0].count == 1
    assert set(repo.files) == {"digits/config.pbtxt"}
    # No preferred sizes asked for: the batcher's own choice, only the queue delay is set.
    assert "preferred_batch_size" not in repo.files["digits/config.pbtxt"].decode()
    assert config.dynamic_batching.max_queue_delay_microseconds == 100


def test_onnx_on_cpu_with_onnxruntime_backend_is_the_default() -> None:
    repo = build_model_repository("digits", onnx_metadata(), ONNX_URI, triton(), 0)
    config = parsed(repo.files["digits/config.pbtxt"])
    assert config.platform == "onnxruntime_onnx"
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU
    assert "digits/1/model.py" not in repo.files


def test_tensorrt_engine_is_a_tensorrt_plan_on_the_gpu_with_its_dtypes() -> None:
    spec = triton(maxBatchSize=16, instanceCount=2, dynamicBatching={"maxQueueDelayMicroseconds": 500})
    repo = build_model_repository("digits-trt", tensorrt_metadata(), PLAN_URI, spec, 1)
    config = parsed(repo.files["digits-trt/config.pbtxt"])
    assert config.platform == "tensorrt_plan"
    assert config.max_batch_size == 16
    assert config.input[0].data_type == model_config_pb2.TYPE_FP32
    assert config.output[0].data_type == model_config_pb2.TYPE_FP16
    assert list(config.input[0].dims) == [1, 8, 8]
    assert config.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert config.instance_group[0].count == 2
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert repo.artifact.path == "digits-trt/1/model.plan"
    assert set(repo.files) == {"digits-trt/config.pbtxt"}


def test_tensorrt_engine_without_a_gpu_is_refused_with_the_reason() -> None:
    with pytest.raises(TritonBuildError, match="GPU only"):
        build_model_repository("digits", tensorrt_metadata(), PLAN_URI, triton(), 0, cpu_backend="python")


def test_max_batch_size_is_the_smaller_of_spec_and_engine_and_preferred_sizes_follow_it() -> None:
    spec = triton(maxBatchSize=64, dynamicBatching={"preferredBatchSizes": [32, 4, 16, 64, 8]})
    repo = build_model_repository("digits", onnx_metadata(max_batch_size=16), ONNX_URI, spec, 1)
    config = parsed(repo.files["digits/config.pbtxt"])
    assert config.max_batch_size == 16
    # Triton refuses a preferred size above max_batch_size: those are left out (and said so), the
    # rest sorted.
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8, 16]
    assert repo.notes == (
        "max_batch_size 64 lowered to the engine's 16",
        "preferred batch sizes [32, 64] exceed max_batch_size 16 and were left out",
    )
    smaller = build_model_repository(
        "digits", onnx_metadata(max_batch_size=16), ONNX_URI, triton(maxBatchSize=4), 1
    )
    assert parsed(smaller.files["digits/config.pbtxt"]).max_batch_size == 4
    assert smaller.notes == ()


def test_dynamic_batching_disabled_leaves_the_batcher_out() -> None:
    spec = triton(dynamicBatching={"enabled": False, "preferredBatchSizes": [4]})
    repo = build_model_repository("digits", onnx_metadata(), ONNX_URI, spec, 0, cpu_backend="python")
    assert "dynamic_batching" not in repo.files["digits/config.pbtxt"].decode()
    assert not parsed(repo.files["digits/config.pbtxt"]).HasField("dynamic_batching")


def test_fixed_batch_axis_means_no_triton_batching_and_full_dims() -> None:
    metadata = onnx_metadata()
    metadata["inputs"][0]["shape"] = [1, 1, 8, 8]
    metadata["outputs"][0]["shape"] = [1, 10]
    repo = build_model_repository("digits", metadata, ONNX_URI, triton(), 0, cpu_backend="python")
    config = parsed(repo.files["digits/config.pbtxt"])
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [1, 1, 8, 8]  # max_batch_size 0: dims are the whole shape
    assert not config.HasField("dynamic_batching")
    assert repo.max_batch_size == 0
    assert any("fixed first axis" in note for note in repo.notes)
    assert any("dynamic batching needs max_batch_size > 0" in note for note in repo.notes)


def test_tensor_with_only_a_batch_axis_is_dims_one_reshaped_to_a_scalar() -> None:
    metadata = onnx_metadata()
    metadata["outputs"] = [{"name": "score", "dtype": "float64", "shape": [-1]}]
    repo = build_model_repository("scorer", metadata, ONNX_URI, triton(), 1)
    config = parsed(repo.files["scorer/config.pbtxt"])
    assert list(config.output[0].dims) == [1]
    assert list(config.output[0].reshape.shape) == []
    assert config.output[0].HasField("reshape")
    assert config.output[0].data_type == model_config_pb2.TYPE_FP64


def test_digest_is_stable_for_equal_input_and_changes_with_config_engine_or_location() -> None:
    def build(
        metadata: dict[str, Any] | None = None, uri: str = ONNX_URI, **wire: Any
    ) -> builder.ModelRepository:
        return build_model_repository(
            "digits", metadata or onnx_metadata(), uri, triton(**wire), 0, cpu_backend="python"
        )

    base = build()
    again = build()
    assert again.digest == base.digest
    assert len(base.digest) == 64
    assert repository_uri("s3://models/serving/", base) == repository_uri("s3://models/serving", again)
    assert (
        repository_uri("s3://models/serving", base)
        == f"s3://models/serving/triton/digits/{base.digest[:16]}/"
    )

    other_engine = onnx_metadata()
    other_engine["artifact"] = {**other_engine["artifact"], "sha256": "0" * 64}
    changed = {
        "config": build(instanceCount=2),
        "batching": build(dynamicBatching={"maxQueueDelayMicroseconds": 200}),
        "engine": build(other_engine),
        "location": build(uri="s3://models/engines/digits-v2/model.onnx"),
        "backend": build_model_repository("digits", onnx_metadata(), ONNX_URI, triton(), 0),
    }
    digests = {name: repo.digest for name, repo in changed.items()}
    assert base.digest not in digests.values()
    assert len(set(digests.values())) == len(digests)
    # The digest is the contract's over the manifest: the init container recomputes the same value.
    assert RepositoryManifest.parse(base.manifest_bytes()).digest == base.digest


def test_manifest_lists_files_with_sha256_and_the_engine_by_reference() -> None:
    repo = build_model_repository("digits", onnx_metadata(), ONNX_URI, triton(), 0, cpu_backend="python")
    manifest = json.loads(repo.manifest_bytes())
    assert manifest["schema"] == "mlops.dev/triton-repository/v1"
    assert manifest["model"] == "digits"
    assert manifest["digest"] == repo.digest
    assert [f["path"] for f in manifest["files"]] == ["digits/1/model.py", "digits/config.pbtxt"]
    assert all(len(f["sha256"]) == 64 and f["sizeBytes"] > 0 for f in manifest["files"])
    assert manifest["artifact"] == {
        "path": "digits/1/model.onnx",
        "uri": ONNX_URI,
        "sha256": SHA,
        "sizeBytes": 620029,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(digest="0" * 64), "does not match its content"),
        (lambda m: m["files"][0].update(path="../../etc/passwd"), "not a relative repository path"),
        (lambda m: m["artifact"].update(path="/models/x"), "not a relative repository path"),
        (lambda m: m.update(schema="mlops.dev/triton-repository/v0"), "not a mlops.dev/triton-repository/v1"),
        (lambda m: m.pop("artifact"), "malformed"),
    ],
)
def test_a_tampered_or_foreign_manifest_is_refused(change: Any, message: str) -> None:
    repo = build_model_repository("digits", onnx_metadata(), ONNX_URI, triton(), 0, cpu_backend="python")
    manifest = json.loads(repo.manifest_bytes())
    change(manifest)
    with pytest.raises(ManifestError, match=message):
        RepositoryManifest.parse(json.dumps(manifest).encode())


@pytest.mark.parametrize(
    ("mutate", "uri", "message"),
    [
        (lambda m: m.update(schema="mlops.dev/model-metadata/v1"), ONNX_URI, "schema"),
        (lambda m: m.update(format="torchscript"), ONNX_URI, "neither tensorrt nor onnx"),
        (lambda m: m["inputs"][0].update(dtype="DataType.FP8"), ONNX_URI, "no Triton data type"),
        (lambda m: m.update(outputs=[]), ONNX_URI, "lists no outputs"),
        (lambda m: m["artifact"].update(sha256=""), ONNX_URI, "no sha256"),
        (lambda m: None, "s3://models/engines/digits-v1/other.onnx", "does not end in"),
    ],
)
def test_metadata_the_builder_cannot_serve_is_refused_with_a_message(
    mutate: Any, uri: str, message: str
) -> None:
    metadata = copy.deepcopy(onnx_metadata())
    mutate(metadata)
    with pytest.raises(TritonBuildError, match=message):
        build_model_repository("digits", metadata, uri, triton(), 0)


@pytest.mark.parametrize("name", ["", "-digits", "digits/v1", "a b", "x" * 129])
def test_model_names_that_are_not_plain_folder_names_are_refused(name: str) -> None:
    with pytest.raises(TritonBuildError, match="model name"):
        build_model_repository(name, onnx_metadata(), ONNX_URI, triton(), 0)


def test_tritonserver_args_serve_the_local_folder_with_latency_quantiles_and_strict_readiness() -> None:
    args = tritonserver_args("/models")
    assert args[0] == "--model-repository=/models"
    assert {"--http-port=8000", "--grpc-port=8001", "--metrics-port=8002"} <= set(args)
    assert "--metrics-config=summary_latencies=true" in args
    assert "--strict-readiness=true" in args
    assert "--model-control-mode=none" in args
