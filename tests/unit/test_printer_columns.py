"""What `kubectl get` shows of our kinds: the columns name fields the operator writes, in a form a
person can read (issue 15: accuracy was shown with 16 digits)."""

from __future__ import annotations

from datetime import UTC, datetime

from mlops_operator.api.v1alpha1 import ModelVersionSpec
from mlops_operator.api.v1alpha1.kinds import KINDS
from mlops_operator.builders.modelversion import compile_hash
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers.base import Outcome
from mlops_operator.handlers.context import ReconcileContext
from mlops_operator.handlers.modelversion.stages import _evaluated
from mlops_operator.k8s.conditions import ConditionUpdate
from mlops_operator.observation.training import Observation

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SPEC = ModelVersionSpec.model_validate(
    {
        "modelName": "digits",
        "source": {"artifactURI": "s3://b/m/"},
        "evaluation": {"datasetRef": {"name": "digits"}},
        "compile": {"target": "onnx"},
    }
)


def test_the_accuracy_column_reads_a_rounded_field():
    columns = {c.name: c for c in next(k for k in KINDS if k.kind == "ModelVersion").printer_columns}
    assert columns["Accuracy"].json_path == ".status.accuracy"


def test_an_evaluated_version_records_its_accuracy_rounded_for_display():
    body = {
        "kind": "ModelVersion",
        "metadata": {"name": "mv", "namespace": "ns", "uid": "mv-uid", "generation": 1},
        "spec": SPEC.wire(),
        "status": {
            "phase": "Evaluating",
            "specHash": compile_hash(SPEC),
            "pinned": {"spec": SPEC.wire()},
            "engine": {"uri": "s3://b/e/model.onnx", "format": "onnx"},
        },
    }
    cache = Cache()
    cache.upsert("ModelVersion", body)
    ctx = ReconcileContext(body, None, now=lambda: NOW, cache=cache)
    seen = Observation("Succeeded", result={"metrics": {"accuracy": 0.9733333333333334, "loss": 0.1}})
    accepted = ConditionUpdate("SpecAccepted", "True", "Accepted", "")
    outcome = _evaluated(SPEC, ctx, seen, accepted, "2026-01-01T12:00:00Z")
    assert isinstance(outcome, Outcome)
    assert outcome.fields["accuracy"] == 0.9733
    assert outcome.fields["metrics"]["accuracy"] == 0.9733333333333334  # the exact value stays
