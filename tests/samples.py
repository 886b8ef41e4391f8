"""The sample manifests and what each invalid one expects, shared by unit and integration tests."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
INVALID = SAMPLES / "invalid"


@dataclass(frozen=True)
class InvalidSample:
    path: Path
    doc: dict[str, Any]
    field: str  # the field path the error must name
    message: re.Pattern[str]  # what the error must say (pydantic or apiserver wording)


def valid_samples() -> list[Path]:
    return sorted(SAMPLES.glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


def invalid_samples() -> list[InvalidSample]:
    out = []
    for path in sorted(INVALID.glob("*.yaml")):
        text = path.read_text()
        field = re.search(r"^# expect-field: (.+)$", text, re.M)
        message = re.search(r"^# expect-message: (.+)$", text, re.M)
        assert field, f"{path.name} must name the field it breaks (# expect-field: ...)"
        assert message, f"{path.name} must say the message it expects (# expect-message: ...)"
        out.append(
            InvalidSample(
                path, load(path), field.group(1).strip(), re.compile(message.group(1).strip(), re.I)
            )
        )
    return out
