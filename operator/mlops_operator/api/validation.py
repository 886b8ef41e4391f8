"""Checks a manifest against the API models, with messages that name the offending field.

The verdict is the apiserver's for what `kubectl apply` sends. YAML is read as kubectl reads it
(go-yaml v2's rules: `1e3` and `y` are a number and a boolean there, `1:30` a string; PyYAML
thinks otherwise), turned into the JSON kubectl would send (whole-number floats are integers, nulls
dropped as the apiserver prunes them before defaulting), then validated strictly: no coercion of
"4" to 4 or of "true" to True, no snake_case field names (only the wire names exist on the apiserver).
"""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.nodes import ScalarNode

from .v1alpha1 import API_VERSION, kind_by_name

# --- YAML as kubectl reads it (go.yaml.in/yaml/v2 v2.4.3, resolve.go) -----------------------------

_STR, _NULL, _BOOL = "tag:yaml.org,2002:str", "tag:yaml.org,2002:null", "tag:yaml.org,2002:bool"
_INT, _FLOAT, _MERGE = "tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:merge"
_GO_WORDS: dict[str, tuple[str, Any]] = {
    **dict.fromkeys(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"], (_BOOL, True)),
    **dict.fromkeys(
        ["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], (_BOOL, False)
    ),
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], (_NULL, None)),
    **dict.fromkeys([".nan", ".NaN", ".NAN"], (_FLOAT, math.nan)),
    **dict.fromkeys([".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"], (_FLOAT, math.inf)),
    **dict.fromkeys(["-.inf", "-.Inf", "-.INF"], (_FLOAT, -math.inf)),
    "<<": (_MERGE, "<<"),
}
_GO_YAML_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
# strconv.ParseInt/ParseUint with base 0 (underscores already removed by the resolver).
_GO_INT = re.compile(
    r"(?P<sign>[-+]?)(?:0[xX](?P<hex>[0-9a-fA-F]+)|0[bB](?P<bin>[01]+)|0[oO]?(?P<oct>[0-7]+)|(?P<dec>[0-9]+))"
)
_INT64, _UINT64 = 2**63, 2**64


def _go_int(text: str) -> int | None:
    match = _GO_INT.fullmatch(text)
    if not match:
        return None
    digits = next(
        (match[b], base) for b, base in (("hex", 16), ("bin", 2), ("oct", 8), ("dec", 10)) if match[b]
    )
    value = int(digits[0], digits[1]) * (-1 if match["sign"] == "-" else 1)
    if -_INT64 <= value < _INT64 or (not match["sign"] and value < _UINT64):
        return value
    return None


def _go_float(text: str) -> float | None:
    """strconv.ParseFloat of a decimal literal; None where it fails (overflow included)."""
    if not _GO_YAML_FLOAT.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def go_yaml_scalar(text: str) -> tuple[str, Any]:
    """What go-yaml v2 makes of a plain (unquoted) scalar when decoding into interface{}."""
    if text in _GO_WORDS:
        return _GO_WORDS[text]
    first = text[0]
    if first == ".":
        value = _go_float(text)
        return (_FLOAT, value) if value is not None else (_STR, text)
    if first in "+-0123456789":
        # (A timestamp such as 2024-01-02 is resolved, then handed to interface{} as its text.)
        plain = text.replace("_", "")
        if (integer := _go_int(plain)) is not None:
            return _INT, integer
        if (number := _go_float(plain)) is not None:
            return _FLOAT, number
    return _STR, text


class KubectlLoader(yaml.SafeLoader):
    """A safe loader that resolves plain scalars as kubectl (go-yaml v2) does."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0]:
            return go_yaml_scalar(value)[0]
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]

    def construct_go_scalar(self, node: Any) -> Any:
        tag, value = go_yaml_scalar(str(self.construct_scalar(node)))
        if tag != node.tag:  # an explicit tag such as !!int "4": PyYAML's reading
            explicit = {_INT: self.construct_yaml_int, _FLOAT: self.construct_yaml_float}
            return explicit.get(node.tag, self.construct_yaml_bool)(node)
        return value

    def construct_text(self, node: Any) -> str:
        return str(self.construct_scalar(node))


for _tag in (_INT, _FLOAT, _BOOL):
    KubectlLoader.add_constructor(_tag, KubectlLoader.construct_go_scalar)
# Timestamps reach interface{} (and so the JSON) as their text; so does a lone "<<" value.
KubectlLoader.add_constructor("tag:yaml.org,2002:timestamp", KubectlLoader.construct_text)
KubectlLoader.add_constructor(_MERGE, KubectlLoader.construct_text)


class KubectlDumper(yaml.SafeDumper):
    """A safe dumper that quotes every string kubectl would otherwise read as something else."""

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is ScalarNode and implicit[0]:
            return go_yaml_scalar(value)[0]
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]


def load_manifests(text: str) -> list[Any]:
    """The documents of a YAML stream, as kubectl reads them (empty documents left out)."""
    return [doc for doc in yaml.load_all(text, Loader=KubectlLoader) if doc is not None]


def dump_manifest(doc: Any) -> str:
    """YAML that kubectl reads back as `doc`."""
    return str(yaml.dump(doc, Dumper=KubectlDumper, sort_keys=False))


# --- the verdict -------------------------------------------------------------------------------


class ManifestError(ValueError):
    """A manifest the API refuses; `errors` are `field.path: message` lines."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def as_sent(value: Any, loc: tuple[int | str, ...] = ()) -> Any:
    """`value` (parsed YAML) as the JSON the apiserver receives and validates."""
    if isinstance(value, dict):
        # JSON object keys are strings; YAML's `1: x` or `true: x` arrive as "1" and "true".
        return {_key(k): as_sent(v, (*loc, _key(k))) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple):
        return [as_sent(v, (*loc, i)) for i, v in enumerate(value)]
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ManifestError([f"{_path(loc)}: {value} is not a number JSON can carry"])
        return int(value) if value.is_integer() else value
    if isinstance(value, datetime.date):  # an unquoted YAML timestamp reaches the apiserver as text
        return value.isoformat()
    if value is None or isinstance(value, str | int | bool):
        return value
    return str(value)


def _key(key: Any) -> str:
    if isinstance(key, bool):
        return "true" if key else "false"
    return str(key)


def validate_manifest(doc: dict[str, Any]) -> None:
    """Raise ManifestError when `doc` is not a valid object of one of our kinds."""
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError([f"apiVersion: expected {API_VERSION}, got {doc.get('apiVersion')!r}"])
    try:
        info = kind_by_name(str(doc.get("kind")))
    except KeyError as exc:
        raise ManifestError([f"kind: {exc.args[0]}"]) from None
    payload = json.dumps(as_sent(doc))
    try:
        info.resource_model.model_validate_json(payload, strict=True, by_alias=True, by_name=False)
    except ValidationError as exc:
        raise ManifestError(
            [f"{_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        ) from None
