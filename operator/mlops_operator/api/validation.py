"""Checks a manifest against the API models, with messages that name the offending field."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from .v1alpha1 import API_VERSION, kind_by_name


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


def validate_manifest(doc: dict[str, Any]) -> None:
    """Raise ManifestError when `doc` is not a valid object of one of our kinds."""
    if doc.get("apiVersion") != API_VERSION:
        raise ManifestError([f"apiVersion: expected {API_VERSION}, got {doc.get('apiVersion')!r}"])
    try:
        info = kind_by_name(str(doc.get("kind")))
    except KeyError as exc:
        raise ManifestError([f"kind: {exc.args[0]}"]) from None
    try:
        info.resource_model.model_validate(doc)
    except ValidationError as exc:
        raise ManifestError(
            [f"{_path(e['loc'])}: {e['msg'].removeprefix('Value error, ')}" for e in exc.errors()]
        ) from None
