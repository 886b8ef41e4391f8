"""Generates the CRDs in `crds/` from the pydantic models (the one source of the API).

Pydantic emits JSON Schema 2020-12; the apiserver wants a *structural* OpenAPI v3 schema. The
translation: inline every `$ref`, turn `Optional[X]` (anyOf X|null) into X, drop titles and `null`
defaults, turn free-form maps into `x-kubernetes-preserve-unknown-fields`, and keep descriptions,
defaults, enums, bounds, patterns and the CEL rules the models declare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .api.v1alpha1 import GROUP, KINDS, VERSION, KindInfo
from .api.v1alpha1.kinds import CATEGORY

_DROP_KEYS = {"title", "discriminator"}


def _inline(node: Any, defs: dict[str, Any]) -> Any:
    """Resolve `$ref`s (merging sibling keys such as a field's description) and clean each node."""
    if isinstance(node, list):
        return [_inline(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        merged = _inline(target, defs)
        siblings = {k: _inline(v, defs) for k, v in node.items()}
        rules = merged.get("x-kubernetes-validations", []) + siblings.pop("x-kubernetes-validations", [])
        merged.update(siblings)
        if rules:
            merged["x-kubernetes-validations"] = rules
        return merged
    if "allOf" in node and len(node["allOf"]) == 1:
        inner = node.pop("allOf")[0]
        return _inline({**inner, **node}, defs)
    if "anyOf" in node:
        branches = [b for b in node["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"a union other than Optional[X] cannot be structural: {node['anyOf']}")
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if rest.get("default", "") is None:
            del rest["default"]
        return _inline({**branches[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS or key == "$defs":
            continue
        if key == "properties":
            out[key] = {name: _inline(sub, defs) for name, sub in value.items()}
        elif key == "default" and value is None:
            continue
        else:
            out[key] = _inline(value, defs)
    return _structural(out)


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    if node.get("x-kubernetes-preserve-unknown-fields"):
        # Free-form map: keep whatever the user writes, no per-value schema.
        node.pop("additionalProperties", None)
        node["type"] = "object"
    elif node.get("type") == "object" and node.get("additionalProperties") is True:
        node.pop("additionalProperties")
        node["x-kubernetes-preserve-unknown-fields"] = True
    elif node.get("additionalProperties") is False:
        # Structural schemas prune unknown fields instead of refusing them.
        del node["additionalProperties"]
    if "enum" in node and "type" not in node:
        node["type"] = "string"
    if "const" in node:
        node["enum"] = [node.pop("const")]
    return node


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    return _inline(raw, raw.get("$defs", {}))  # type: ignore[no-any-return]


def crd_for(info: KindInfo) -> dict[str, Any]:
    spec_schema = openapi_schema(info.spec_model)
    status_schema = openapi_schema(info.status_model)
    status_schema.pop("required", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "mlops-operator"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": [CATEGORY],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [c.to_crd() for c in info.printer_columns],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": info.description,
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def render(crd: dict[str, Any]) -> str:
    header = "# Generated by `mlopsctl crds` from operator/mlops_operator/api. Do not edit.\n"
    return header + yaml.safe_dump(crd, sort_keys=False, width=110)


def kopf_peering_crds() -> list[dict[str, Any]]:
    """kopf's peering CRDs (its peering.yaml), for running replicas in HA (MLOPS_PEERING_NAME)."""
    crds = []
    for scope, kind in (("Cluster", "ClusterKopfPeering"), ("Namespaced", "KopfPeering")):
        crds.append(
            {
                "apiVersion": "apiextensions.k8s.io/v1",
                "kind": "CustomResourceDefinition",
                "metadata": {"name": f"{kind.lower()}s.kopf.dev"},
                "spec": {
                    "scope": scope,
                    "group": "kopf.dev",
                    "names": {"kind": kind, "plural": f"{kind.lower()}s", "singular": kind.lower()},
                    "versions": [
                        {
                            "name": "v1",
                            "served": True,
                            "storage": True,
                            "schema": {
                                "openAPIV3Schema": {
                                    "type": "object",
                                    "properties": {
                                        "status": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        }
                                    },
                                }
                            },
                        }
                    ],
                },
            }
        )
    return crds


PEERING_FILE = "kopf.dev_peerings.yaml"


def generate() -> dict[str, str]:
    """File name -> YAML text of every CRD."""
    files = {f"{GROUP}_{info.plural}.yaml": render(crd_for(info)) for info in KINDS}
    header = "# Generated by `mlopsctl crds`: kopf's peering CRDs, for HA replicas. Do not edit.\n"
    files[PEERING_FILE] = header + yaml.safe_dump_all(kopf_peering_crds(), sort_keys=False)
    return files


def write(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    wanted = generate()
    for stale in [*out_dir.glob(f"{GROUP}_*.yaml"), *out_dir.glob("kopf.dev_*.yaml")]:
        if stale.name not in wanted:
            stale.unlink()
    for name, text in wanted.items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
        written.append(path)
    return written
