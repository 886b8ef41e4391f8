"""Which Triton version answers (issue 17): a ModelVersion's registry version is its Triton version
number (`builders.triton.triton_model_version`), the version folder of its repository, and what the
InferenceDeployment's status.repository.tritonVersion says. The real tritonserver reporting that
number in responses and metrics: tests/integration/test_triton_serving.py."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mlops_contract.modelrepository import RepositoryManifest

from mlops_operator.api.v1alpha1 import InferenceDeploymentSpec
from mlops_operator.api.v1alpha1.inferencedeployment import InferenceDeploymentStatus, Triton
from mlops_operator.api.v1alpha1.modelversion import ModelVersionStatus
from mlops_operator.builders.triton import (
    TritonBuildError,
    build_model_repository,
    repository_uri,
    triton_model_version,
)
from mlops_operator.handlers import inferencedeployment
from mlops_operator.handlers.context import ReconcileContext
from mlops_operator.handlers.inferencedeployment.repository import serving_version, settings_hash
from tests.unit.test_triton_builder import ONNX_URI, PLAN_URI, onnx_metadata, tensorrt_metadata


@pytest.mark.parametrize(
    ("registry_version", "expected"),
    [
        ("1", 1),  # MLflow counts from 1: models:/<name>/N is Triton's N
        ("2", 2),
        ("17", 17),
        ("v0", 1),  # W&B counts from v0; Triton ignores a version folder named 0
        ("v1", 2),
        ("v41", 42),
        (None, 1),  # no registry
        ("", 1),
        ("0", 1),  # not an MLflow version: no folder 0 either
        ("latest", 1),
        ("v", 1),
        ("v-1", 1),
        ("-3", 1),
        ("1.5", 1),
        ("9" * 19, 1),  # past int64
        ("999999999999999999", 999_999_999_999_999_999),
    ],
)
def test_registry_versions_map_to_positive_triton_versions(
    registry_version: str | None, expected: int
) -> None:
    assert triton_model_version(registry_version) == expected


def test_the_repository_holds_the_model_under_its_triton_version_folder() -> None:
    spec = Triton.model_validate({})
    one = build_model_repository("digits", onnx_metadata(), ONNX_URI, spec, 0, cpu_backend="python")
    four = build_model_repository(
        "digits", onnx_metadata(), ONNX_URI, spec, 0, cpu_backend="python", version=4
    )
    assert one.version == 1
    assert four.version == 4
    assert set(four.files) == {"digits/config.pbtxt", "digits/4/model.py"}
    assert four.files["digits/4/model.py"] == one.files["digits/1/model.py"]
    assert four.files["digits/config.pbtxt"] == one.files["digits/config.pbtxt"]  # latest: whichever folder
    assert four.artifact.path == "digits/4/model.onnx"
    assert (four.artifact.uri, four.artifact.sha256) == (one.artifact.uri, one.artifact.sha256)
    manifest = json.loads(four.manifest_bytes())
    assert [f["path"] for f in manifest["files"]] == ["digits/4/model.py", "digits/config.pbtxt"]
    assert manifest["artifact"]["path"] == "digits/4/model.onnx"
    assert RepositoryManifest.parse(four.manifest_bytes()).digest == four.digest
    # Another version is another repository, beside the first.
    assert four.digest != one.digest
    assert repository_uri("s3://m/serving", four) != repository_uri("s3://m/serving", one)
    plan = build_model_repository("digits", tensorrt_metadata(), PLAN_URI, spec, 1, version=3)
    assert (plan.artifact.path, set(plan.files)) == ("digits/3/model.plan", {"digits/config.pbtxt"})


@pytest.mark.parametrize("version", [0, -1, 2**63, True])
def test_a_version_triton_would_ignore_or_cannot_hold_is_refused(version: int) -> None:
    with pytest.raises(TritonBuildError, match="not a positive int64"):
        build_model_repository(
            "digits", onnx_metadata(), ONNX_URI, Triton.model_validate({}), 0, version=version
        )


@pytest.mark.parametrize(
    ("mv_status", "expected"),
    [
        ({"servingVersion": 5, "registry": {"version": "2"}}, 5),  # recorded at registration: it wins
        ({"registry": {"provider": "mlflow", "version": "3"}}, 3),  # registered before servingVersion
        ({"registry": {"provider": "wandb", "version": "v3"}}, 4),
        ({"registry": None}, 1),
        ({}, 1),
        ({"servingVersion": 0, "registry": {"version": "6"}}, 6),  # not a Triton version: derived
        ({"servingVersion": "7"}, 1),
    ],
)
def test_the_serving_side_reads_status_serving_version_or_derives_it(
    mv_status: dict[str, Any], expected: int
) -> None:
    assert serving_version(mv_status) == expected


def test_the_status_fields_validate_by_their_wire_names() -> None:
    mv = ModelVersionStatus.model_validate({"servingVersion": 3})
    assert mv.serving_version == 3
    assert mv.wire()["servingVersion"] == 3
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        ModelVersionStatus.model_validate({"servingVersion": 0})
    repository = {
        "modelVersion": "v3",
        "engineURI": "s3://b/e/model.onnx",
        "uri": "s3://b/t/",
        "tritonVersion": 3,
    }
    idep = InferenceDeploymentStatus.model_validate({"repository": repository})
    assert idep.repository is not None
    assert idep.repository.triton_version == 3
    assert idep.wire()["repository"]["tritonVersion"] == 3


SPEC = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v2"}})
ENGINE = "s3://b/engines/v2/model.onnx"


def _mv(**status: Any) -> dict[str, Any]:
    dataset = {"source": {"uri": "s3://data/digits/", "credentialsSecretRef": {"name": "s3"}}}
    return {
        "metadata": {"name": "v2"},
        "spec": {"modelName": "digits"},
        "status": {
            "engine": {"uri": ENGINE, "metadataURI": "s3://b/engines/v2/m.json"},
            "pinned": {"datasetSpec": dataset},
            **status,
        },
    }


def _ctx(repository: dict[str, Any]) -> ReconcileContext:
    body = {
        "metadata": {"name": "digits", "namespace": "ns", "uid": "idep-uid", "generation": 1},
        "status": {"repository": repository},
    }
    ctx = ReconcileContext(body, None)
    repository.setdefault("settingsHash", settings_hash(SPEC, ctx))
    return ctx


def test_a_published_repository_is_reused_only_for_the_same_triton_version() -> None:
    known = {"modelVersion": "v2", "engineURI": ENGINE, "uri": "s3://b/triton/abc/"}
    # Published for Triton version 2: reused as it is (no request: this context has no clients).
    reused = inferencedeployment.published(SPEC, _ctx({**known, "tritonVersion": 2}), _mv(servingVersion=2))
    assert isinstance(reused, dict)
    assert (reused["uri"], reused["tritonVersion"]) == ("s3://b/triton/abc/", 2)
    # A status from before tritonVersion was recorded held version 1: reused while the version is 1 ...
    legacy = inferencedeployment.published(SPEC, _ctx(dict(known)), _mv())
    assert isinstance(legacy, dict)
    assert (legacy["uri"], legacy["tritonVersion"]) == ("s3://b/triton/abc/", 1)
    # ... and built and published again for another number (here: no clients, so the attempt raises).
    for ctx, mv in [
        (_ctx(dict(known)), _mv(registry={"provider": "mlflow", "version": "2"})),
        (_ctx({**known, "tritonVersion": 1}), _mv(servingVersion=2)),
        (_ctx({**known, "tritonVersion": 3}), _mv(registry={"provider": "wandb", "version": "v1"})),
    ]:
        with pytest.raises(RuntimeError, match="needs API clients"):
            inferencedeployment.published(SPEC, ctx, mv)
