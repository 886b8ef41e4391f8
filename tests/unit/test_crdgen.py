"""The CRDs in crds/ are what the models generate, and they are what the apiserver needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mlops_operator import crdgen
from mlops_operator.api.v1alpha1 import KINDS, KindInfo
from mlops_operator.api.v1alpha1 import kubevalues as kv
from mlops_operator.api.v1alpha1.common import ApiModel, CelRule

CRDS = Path(__file__).resolve().parents[2] / "crds"


def _crds() -> list[tuple[KindInfo, dict[str, Any]]]:
    return [(info, crdgen.crd_for(info)) for info in KINDS]


def _schema(crd: dict[str, Any]) -> dict[str, Any]:
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


def test_checked_in_crds_are_up_to_date():
    generated = crdgen.generate()
    on_disk = {p.name: p.read_text() for p in [*CRDS.glob("mlops.dev_*.yaml"), *CRDS.glob("kopf.dev_*.yaml")]}
    assert set(on_disk) == set(generated), "crds/ has missing or extra files: run `make crds`"
    for name, text in generated.items():
        assert on_disk[name] == text, f"crds/{name} is stale: run `make crds`"


def _walk(node: dict[str, Any], path: str):
    yield path, node
    for name, sub in node.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


FORBIDDEN = {"$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "definitions", "title", "const"}


@pytest.mark.parametrize(("info", "crd"), _crds(), ids=lambda x: getattr(x, "kind", ""))
def test_schema_is_structural(info, crd):
    for path, node in _walk(_schema(crd), info.kind):
        assert not FORBIDDEN & node.keys(), f"{path} uses {FORBIDDEN & node.keys()}"
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), f"{path} has no type"
        if node.get("type") == "object":
            assert (
                "properties" in node
                or "additionalProperties" in node
                or node.get("x-kubernetes-preserve-unknown-fields")
                or path.endswith(".metadata")
            ), f"{path}: object without properties"
        assert node.get("default", "") is not None, f"{path} defaults to null"
        assert isinstance(node.get("exclusiveMinimum", False), bool), f"{path}: exclusiveMinimum must be bool"


@pytest.mark.parametrize(("info", "crd"), _crds(), ids=lambda x: getattr(x, "kind", ""))
def test_every_spec_field_is_described_for_kubectl_explain(info, crd):
    spec = _schema(crd)["properties"]["spec"]
    missing = [p for p, node in _walk(spec, "spec") if p != "spec" and not node.get("description")]
    # Items of plain lists and map values need no description of their own.
    missing = [p for p in missing if not p.endswith(("[]", "{}"))]
    assert not missing, f"{info.kind}: fields without description: {missing}"


@pytest.mark.parametrize(("info", "crd"), _crds(), ids=lambda x: getattr(x, "kind", ""))
def test_names_category_subresource_and_columns(info, crd):
    spec = crd["spec"]
    assert crd["metadata"]["name"] == f"{info.plural}.mlops.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["shortNames"] == list(info.short_names)
    assert spec["names"]["categories"] == ["mlops"]
    version = spec["versions"][0]
    assert version["name"] == "v1alpha1"
    assert version["served"]
    assert version["storage"]
    assert version["subresources"] == {"status": {}}
    # What `kubectl get` shows (priority 0; -o wide adds the rest): Phase first, Ready and Age last.
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns[0] == "Phase"
    assert columns[-2:] == ["Ready", "Age"]
    for column in version["additionalPrinterColumns"]:
        first = column["jsonPath"].split(".")[1].split("[")[0]
        assert first in {"spec", "status", "metadata"}


def test_short_names_are_the_documented_ones():
    assert {i.kind: i.short_names for i in KINDS} == {
        "Dataset": ("dset",),
        "TrainingRun": ("tr",),
        "ModelVersion": ("mv",),
        "InferenceDeployment": ("idep",),
        "DriftMonitor": ("dm",),
        "ModelPipeline": ("mp",),
    }


def test_trainingrun_columns_match_the_issue():
    crd = crdgen.crd_for(next(i for i in KINDS if i.kind == "TrainingRun"))
    columns = [
        c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"] if "priority" not in c
    ]
    assert columns == ["Phase", "Queued", "Dataset", "Nodes", "GPUs", "Attempt", "Ready", "Age"]


def test_modelversion_shows_what_a_queued_stage_waits_for_in_the_wide_view_only():
    crd = crdgen.crd_for(next(i for i in KINDS if i.kind == "ModelVersion"))
    columns = {c["name"]: c for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["Queued"]["jsonPath"] == ".status.queue.reason"
    assert columns["Queued"]["priority"] == 1  # the default list stays as it was
    default = [name for name, c in columns.items() if "priority" not in c]
    assert default == ["Phase", "Model", "Target", "Accuracy", "Registry Version", "Ready", "Age"]


def _all_models() -> set[type[ApiModel]]:
    seen: set[type[ApiModel]] = set()
    todo: list[type[ApiModel]] = [i.spec_model for i in KINDS]  # type: ignore[misc]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for field in model.model_fields.values():
            for arg in _types_in(field.annotation):
                if isinstance(arg, type) and issubclass(arg, ApiModel):
                    todo.append(arg)
    return seen


def _types_in(annotation: Any):
    yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _types_in(arg)


def _field_rules(model: type[ApiModel]) -> list[CelRule]:
    """CelRules guarding single fields (Annotated metadata, also inside Optional[...])."""
    rules: list[CelRule] = []
    for field in model.model_fields.values():
        rules += [m for m in field.metadata if isinstance(m, CelRule)]
        for arg in _types_in(field.annotation):
            rules += [m for m in getattr(arg, "__metadata__", ()) if isinstance(m, CelRule)]
    return rules


def test_every_cel_rule_of_the_models_is_in_the_crds():
    rules = [r for model in _all_models() for r in (*model.cel_rules, *_field_rules(model))]
    assert len(rules) >= 10
    assert {"isQuantity", "format.qualifiedName"} <= {
        word for r in rules for word in ("isQuantity", "format.qualifiedName") if word in r.rule
    }
    in_crds = [
        (v["rule"], v["message"])
        for _, crd in _crds()
        for _, node in _walk(_schema(crd), "")
        for v in node.get("x-kubernetes-validations", [])
    ]
    for rule in rules:
        assert (rule.rule, rule.message) in in_crds, rule
        assert rule.check is not None, "every spec rule has its Python twin"


def test_immutable_fields_carry_transition_rules():
    schema = _schema(crdgen.crd_for(next(i for i in KINDS if i.kind == "TrainingRun")))["properties"]["spec"]
    for field in ("datasetRef", "model"):
        rules = schema["properties"][field]["x-kubernetes-validations"]
        assert {"rule": "self == oldSelf", "message": f"{field} is immutable"} in rules


def test_lists_are_bounded_for_cel_cost():
    """The apiserver refuses CEL rules whose worst-case cost is unbounded; lists and maps need bounds."""
    for info, crd in _crds():
        for path, node in _walk(_schema(crd)["properties"]["spec"], info.kind):
            if node.get("type") == "array":
                assert "maxItems" in node, f"{path} has no maxItems"
            if node.get("type") == "string" and node.get("x-kubernetes-validations"):
                assert "maxLength" in node, f"{path} has CEL rules but no maxLength"
            if isinstance(node.get("additionalProperties"), dict) and node.get("x-kubernetes-validations"):
                assert "maxProperties" in node, f"{path} has CEL rules but no maxProperties"


def _spec_node(kind: str, path: str) -> dict[str, Any]:
    node = _schema(crdgen.crd_for(next(i for i in KINDS if i.kind == kind)))["properties"]["spec"]
    for part in path.split("."):
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


@pytest.mark.parametrize(
    ("kind", "path"),
    [
        ("TrainingRun", "resources.cpu"),
        ("TrainingRun", "resources.memory"),
        ("InferenceDeployment", "resources.cpu"),
        ("InferenceDeployment", "resources.memory"),
    ],
)
def test_every_quantity_is_checked_by_the_apiserver_quantity_parser(kind, path):
    rules = [v["rule"] for v in _spec_node(kind, path)["x-kubernetes-validations"]]
    assert any("isQuantity(self)" in r and "quantity(self).isLessThan(quantity('0'))" in r for r in rules)


@pytest.mark.parametrize(
    ("kind", "path", "what"),
    [
        ("TrainingRun", "resources.gpuProduct", "label value"),
        ("ModelVersion", "compile.gpuProduct", "label value"),
        ("InferenceDeployment", "resources.gpuProduct", "label value"),
        ("TrainingRun", "image", "image"),
        ("ModelVersion", "compile.image", "image"),
        ("InferenceDeployment", "triton.image", "image"),
        ("Dataset", "source.endpointURL", "url"),
        ("ModelVersion", "registry.trackingURI", "url"),
        ("InferenceDeployment", "rollout.analysis.prometheusAddress", "url"),
        ("Dataset", "source.credentialsSecretRef.name", "name"),
        ("Dataset", "source.credentialsSecretRef.accessKeyIDKey", "secret key"),
        ("Dataset", "source.credentialsSecretRef.secretAccessKeyKey", "secret key"),
        ("Dataset", "source.credentialsSecretRef.sessionTokenKey", "secret key"),
        ("TrainingRun", "tracking.wandb.apiKeySecretRef.key", "secret key"),
        ("ModelVersion", "registry.credentialsSecretRef.key", "secret key"),
        ("TrainingRun", "serviceAccountName", "name"),
        ("ModelVersion", "serviceAccountName", "name"),
        ("InferenceDeployment", "serviceAccountName", "name"),
        ("TrainingRun", "scheduling.priorityClassName", "name"),
        ("ModelVersion", "scheduling.priorityClassName", "name"),
        ("InferenceDeployment", "scheduling.priorityClassName", "name"),
        ("TrainingRun", "scheduling.tolerations.[].value", "label value"),
    ],
)
def test_embedded_kubernetes_values_carry_kubernetes_patterns(kind, path, what):
    expected = {
        "label value": kv.LABEL_VALUE,
        "image": kv.IMAGE,
        "url": kv.HTTP_URL,
        "name": kv.DNS_SUBDOMAIN,
        "secret key": kv.CONFIG_MAP_KEY,
    }[what]
    node = _spec_node(kind, path)
    assert node["pattern"] == expected
    assert "maxLength" in node


@pytest.mark.parametrize("kind", ["TrainingRun", "ModelVersion", "InferenceDeployment"])
def test_node_selectors_and_tolerations_follow_kubernetes_rules(kind):
    selector = _spec_node(kind, "scheduling.nodeSelector")
    assert selector["additionalProperties"]["pattern"] == kv.LABEL_VALUE
    assert "format.qualifiedName()" in selector["x-kubernetes-validations"][0]["rule"]
    toleration = _spec_node(kind, "scheduling.tolerations.[]")
    messages = {v["message"] for v in toleration["x-kubernetes-validations"]}
    assert messages == {
        "value must be empty when operator is Exists",
        "operator must be Exists when key is empty (which matches all keys and values)",
        "effect must be NoExecute when tolerationSeconds is set",
    }


def test_conditions_are_a_list_map_keyed_by_type():
    for _info, crd in _crds():
        conditions = _schema(crd)["properties"]["status"]["properties"]["conditions"]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
        assert "type" in conditions["items"]["required"]


def test_defaults_reach_the_schema():
    schema = _schema(crdgen.crd_for(next(i for i in KINDS if i.kind == "InferenceDeployment")))
    spec = schema["properties"]["spec"]["properties"]
    assert spec["rollout"]["default"]["strategy"] == "canary"
    assert spec["rollout"]["default"]["analysis"]["successRateMin"] == 0.99
    assert spec["rollout"]["properties"]["strategy"]["default"] == "canary"
    assert spec["rollout"]["properties"]["strategy"]["enum"] == ["canary", "recreate"]
    assert spec["replicas"]["minimum"] == 0


def test_write_is_idempotent_and_removes_stale_files(tmp_path):
    (tmp_path / "mlops.dev_oldkinds.yaml").write_text("stale")
    crdgen.write(tmp_path)
    first = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert "mlops.dev_oldkinds.yaml" not in first
    assert len(first) == len(KINDS) + 1  # and kopf's peering CRDs
    crdgen.write(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == first
