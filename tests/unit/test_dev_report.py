"""What `make dev` prints of each stage's status (dev/pipeline.py `_status_report`): the results the
status holds, or why it holds none; never a bare `{}`. The control plane is stood in for by its
kubectl's answers (the report reads nothing else)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

from mlops_operator.dev.pipeline import _status_report, serving_model_uri

RUN = {"kind": "TrainingRun", "metadata": {"name": "digits-cnn-r1"}}


class Kubectl:
    def __init__(self, obj: dict[str, Any] | None, stderr: str = "") -> None:
        self.obj, self.stderr = obj, stderr

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        code = 0 if self.obj is not None else 1
        return subprocess.CompletedProcess(args, code, json.dumps(self.obj or {}), self.stderr)


def test_a_finished_run_prints_its_results_without_empty_fields():
    status = {"phase": "Succeeded", "attempt": 1, "metrics": {"accuracy": 0.97}, "wandbRun": None}
    text = _status_report(Kubectl({"status": status}), "ns", RUN)  # type: ignore[arg-type]
    assert text.startswith("TrainingRun digits-cnn-r1:\n")
    assert json.loads(text.split("\n", 1)[1]) == {
        "phase": "Succeeded",
        "attempt": 1,
        "metrics": {"accuracy": 0.97},
    }


def test_no_results_or_no_object_say_why():
    ready = {
        "type": "Ready",
        "status": "False",
        "reason": "DatasetNotReady",
        "message": "Dataset digits is Pending",
    }
    text = _status_report(Kubectl({"status": {"conditions": [ready], "metrics": {}}}), "ns", RUN)  # type: ignore[arg-type]
    assert (
        text
        == "TrainingRun digits-cnn-r1: no results in its status (DatasetNotReady: Dataset digits is Pending)"
    )
    assert "not reconciled yet" in _status_report(Kubectl({}), "ns", RUN)  # type: ignore[arg-type]
    gone = _status_report(Kubectl(None, 'trainingruns "digits-cnn-r1" not found'), "ns", RUN)  # type: ignore[arg-type]
    assert gone == 'TrainingRun digits-cnn-r1: cannot be read: trainingruns "digits-cnn-r1" not found'


def test_the_models_uri_of_what_serves_names_the_serving_alias_only_once_it_is_on_that_version() -> None:
    mv = {"registry": {"modelName": "digits-cnn", "version": "3"}}
    applied = {"registry": {"stableAlias": "production", "stableRegistryVersion": "3"}}
    assert serving_model_uri(applied, mv) == "models:/digits-cnn@production"
    # The alias still names the previous version (not moved yet): the number says what serves.
    moving = {"registry": {"stableAlias": "production", "stableRegistryVersion": "2"}}
    assert serving_model_uri(moving, mv) == "models:/digits-cnn/3"
    assert serving_model_uri({}, mv) == "models:/digits-cnn/3"
    assert serving_model_uri(applied, {"phase": "Ready"}) is None
