"""The champion/challenger gate: the pure comparison and the champion-scoring ModelVersion
(builders.champion_gate), and the reconcile cases of the gate that need no writes (no clients: a
call would raise, so each case below decides without one)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from mlops_operator.api.v1alpha1 import ModelPipelineSpec, ModelVersionSpec
from mlops_operator.api.v1alpha1.modelpipeline import ChampionGate
from mlops_operator.builders import champion_gate as gate
from mlops_operator.builders import modelpipeline as mp
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import modelpipeline as handler
from tests.unit.test_modelpipeline import FP1, NS, SAMPLE, _ctx, _dataset, _obj, _written

OWNER = {
    "apiVersion": "mlops.dev/v1alpha1",
    "kind": "ModelPipeline",
    "metadata": {"name": "digits", "namespace": NS, "uid": "u1"},
}


def _gate(*metrics: dict[str, Any], **kw: Any) -> ChampionGate:
    return ChampionGate.model_validate({"metrics": list(metrics), **kw})


def _spec(promotion: dict[str, Any] | None = None) -> ModelPipelineSpec:
    spec = json.loads(json.dumps(SAMPLE["spec"]))
    spec["triggers"] = {}
    spec.pop("promotion", None)
    if promotion is not None:
        spec["promotion"] = promotion
    return ModelPipelineSpec.model_validate(spec)


GATED = {"championGate": {"metrics": [{"name": "accuracy", "margin": 0.01}]}}


# -- API ----------------------------------------------------------------------------------------------


def test_gate_needs_metrics_each_once_and_a_non_negative_margin():
    with pytest.raises(ValidationError):
        _gate()
    with pytest.raises(ValidationError, match="once"):
        _gate({"name": "accuracy"}, {"name": "accuracy", "margin": 0.1})
    with pytest.raises(ValidationError):
        _gate({"name": "accuracy", "margin": -0.1})
    defaults = _spec().promotion
    assert (defaults.champion_gate, defaults.approval) == (None, "Automatic")


# -- the comparison -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("direction", "margin", "mine", "theirs", "passed"),
    [
        ("HigherIsBetter", 0.01, 0.95, 0.93, True),
        ("HigherIsBetter", 0.01, 0.935, 0.93, False),  # better, not by the margin
        ("HigherIsBetter", 0.0, 0.93, 0.93, True),  # margin 0: at least as good
        ("HigherIsBetter", 0.01, 0.94, 0.93, True),  # exactly the margin (0.94 - 0.93 < 0.01 in floats)
        ("HigherIsBetter", 0.0, 0.92, 0.93, False),
        ("LowerIsBetter", 0.5, 2.0, 3.0, True),
        ("LowerIsBetter", 0.5, 2.8, 3.0, False),
        ("LowerIsBetter", 0.0, 3.1, 3.0, False),
    ],
)
def test_challenger_must_win_by_the_margin(direction, margin, mine, theirs, passed):
    g = _gate({"name": "m", "direction": direction, "margin": margin})
    verdict = gate.compare(g, "v2", {"m": mine}, "v1", {"m": theirs})
    assert verdict.passed is passed
    row = verdict.comparison[0]
    assert (row["challenger"], row["champion"], row["passed"]) == (mine, theirs, passed)
    assert verdict.message.startswith("v2 beat champion v1") is passed


def test_every_metric_must_win_and_a_missing_figure_never_promotes():
    g = _gate({"name": "accuracy", "margin": 0.01}, {"name": "loss", "direction": "LowerIsBetter"})
    lost = gate.compare(g, "v2", {"accuracy": 0.99, "loss": 0.3}, "v1", {"accuracy": 0.9, "loss": 0.2})
    assert not lost.passed
    assert "loss 0.3 vs champion 0.2" in lost.message
    assert [r["passed"] for r in lost.comparison] == [True, False]
    missing = gate.compare(g, "v2", {"accuracy": 0.99}, "v1", {"accuracy": 0.9, "loss": True})
    assert not missing.passed
    assert "loss: not reported by v2 and champion v1" in missing.message


def test_approval_annotation_names_the_run():
    assert gate.approved({"mlops.dev/approve": "digits-4"}, "digits-4")
    assert gate.approved({"mlops.dev/approve": "digits-3, digits-4"}, "digits-4")
    assert not gate.approved({"mlops.dev/approve": "digits-40"}, "digits-4")
    assert not gate.approved(None, "digits-4")


# -- what the gate builds -----------------------------------------------------------------------------


def _champion(**status: Any) -> dict[str, Any]:
    spec = {
        "modelName": "digits-cnn",
        "source": {"trainingRunRef": {"name": "digits-1"}},
        "compile": {"target": "onnx", "maxBatchSize": 8},
        "evaluation": {"split": "test", "batchSize": 8, "datasetRef": {"name": "old-data"}},
        "gates": {"metrics": [{"name": "accuracy", "threshold": 0.9}]},
        "registry": {"provider": "mlflow", "project": "p", "trackingURI": "http://mlflow:5000"},
        "serviceAccountName": "trainer",
    }
    body = _obj("ModelVersion", "digits-1", {"phase": "Ready", **status})
    return {**body, "spec": spec}


def test_champion_is_scored_as_it_was_compiled_on_the_gate_data_without_gates_or_registry():
    spec = _spec(
        {
            "championGate": {
                "datasetRef": {"name": "fresh"},
                "split": "holdout",
                "metrics": [{"name": "accuracy"}],
            }
        }
    )
    champion = _champion(lineage={"sourceURI": "s3://b/models/digits-1/"})
    built = gate.build_champion_evaluation(OWNER, spec, "digits-3", 3, champion=champion, fingerprint=FP1)
    assert built is not None
    meta = built["metadata"]
    assert meta["name"] == "digits-3-champion"
    assert meta["labels"][gate.CHAMPION_OF_LABEL] == "3"
    assert mp.RUN_LABEL not in meta["labels"]  # not one of the run's own children
    assert meta["annotations"] == {
        gate.CHAMPION_ANNOTATION: "digits-1",
        gate.GATE_FINGERPRINT_ANNOTATION: FP1,
    }
    assert meta["ownerReferences"][0]["uid"] == "u1"
    body = ModelVersionSpec.model_validate(built["spec"])  # a valid ModelVersion
    assert body.source.artifact_uri == "s3://b/models/digits-1/"
    assert body.evaluation.dataset_ref is not None
    assert body.evaluation.dataset_ref.name == "fresh"
    assert (body.evaluation.split, body.evaluation.batch_size) == ("holdout", 8)
    assert body.compile.max_batch_size == 8
    assert body.registry is None
    assert body.gates.metrics == []
    assert body.service_account_name == "trainer"
    assert (
        gate.build_champion_evaluation(OWNER, spec, "digits-3", 3, champion=_champion(), fingerprint=None)
        is None
    )


def test_challenger_is_evaluated_on_the_gate_data():
    spec = _spec(GATED)
    handled = mp.handled_record(mp.Trigger("Manual", "x"), FP1, {}, [])
    _, version = mp.build_children(OWNER, spec, 2, handled)
    assert version["spec"]["evaluation"]["datasetRef"] == {"name": "digits"}  # the pipeline's Dataset
    assert version["spec"]["evaluation"]["split"] == "test"
    _, ungated = mp.build_children(OWNER, _spec(), 2, handled)
    assert "datasetRef" not in ungated["spec"]["evaluation"]


# -- reconcile: the gate's decisions ------------------------------------------------------------------


def _owned(obj: dict[str, Any]) -> dict[str, Any]:
    obj["metadata"]["ownerReferences"] = [{"kind": "ModelPipeline", "uid": "p-uid", "controller": True}]
    return obj


def _ready_run(cache: Cache, number: int, accuracy: float) -> None:
    name = f"p-{number}"
    cache.upsert(
        "TrainingRun",
        _owned(_obj("TrainingRun", name, {"phase": "Succeeded"}, labels={mp.RUN_LABEL: str(number)})),
    )
    cache.upsert(
        "ModelVersion",
        _owned(
            _obj(
                "ModelVersion",
                name,
                {"phase": "Ready", "metrics": {"accuracy": accuracy}},
                labels={mp.RUN_LABEL: str(number)},
            )
        ),
    )


def _scored(cache: Cache, run: str, champion: str, phase: str, accuracy: float | None = None) -> None:
    status: dict[str, Any] = {"phase": phase}
    if accuracy is not None:
        status["metrics"] = {"accuracy": accuracy}
    if phase == "Failed":
        status["conditions"] = [
            {"type": "Ready", "status": "False", "reason": "StageFailed", "message": "boom"}
        ]
    obj = _obj(
        "ModelVersion",
        f"{run}-champion",
        status,
        labels={gate.CHAMPION_OF_LABEL: run.split("-")[1]},
        annotations={gate.CHAMPION_ANNOTATION: champion, gate.GATE_FINGERPRINT_ANNOTATION: FP1},
    )
    cache.upsert("ModelVersion", _owned(obj))


def _status(*runs: dict[str, Any], promoted: str | None = "p-1") -> dict[str, Any]:
    status: dict[str, Any] = {
        "lastDatasetFingerprint": FP1,
        "lastRunNumber": len(runs) + 1,
        "runs": list(runs),
    }
    if promoted:
        status["latestPromoted"] = promoted
    return status


PROMOTED_1 = {
    "name": "p-1",
    "number": 1,
    "trigger": "Manual",
    "outcome": "Promoted",
    "trainingRun": "p-1",
    "modelVersion": "p-1",
}
RUNNING_2 = {
    "name": "p-2",
    "number": 2,
    "trigger": "Manual",
    "outcome": "Running",
    "trainingRun": "p-2",
    "modelVersion": "p-2",
}


def _look(
    cache: Cache, status: dict[str, Any], spec: ModelPipelineSpec, **annotations: str
) -> tuple[Any, dict[str, Any]]:
    ctx = _ctx(cache, status, spec)
    if annotations:
        ctx.body["metadata"]["annotations"] = annotations
    result = handler.reconcile(spec, ctx)
    return result, _written(result, status)


def _cache(champion_accuracy: float, challenger_accuracy: float, phase: str = "Ready") -> Cache:
    cache = Cache()
    cache.upsert("Dataset", _dataset(FP1))
    _ready_run(cache, 1, 0.9)
    _ready_run(cache, 2, challenger_accuracy)
    _scored(cache, "p-2", "p-1", phase, champion_accuracy)
    return cache


def test_worse_challenger_is_rejected_and_serving_untouched():
    result, out = _look(_cache(0.93, 0.935), _status(PROMOTED_1, RUNNING_2), _spec(GATED))
    run = out["runs"][1]
    assert run["outcome"] == "Rejected"
    assert (run["champion"], run["championEvaluation"], run["gateDatasetFingerprint"]) == (
        "p-1",
        "p-2-champion",
        FP1,
    )
    assert run["comparison"] == [
        {
            "name": "accuracy",
            "challenger": 0.935,
            "champion": 0.93,
            "direction": "HigherIsBetter",
            "margin": 0.01,
            "passed": False,
        }
    ]
    assert "serving is untouched (still p-1)" in run["message"]
    assert out["latestPromoted"] == "p-1"
    assert [e.reason for e in result.events] == ["ChallengerRejected"]


def test_better_challenger_is_promoted():
    result, out = _look(_cache(0.90, 0.97), _status(PROMOTED_1, RUNNING_2), _spec(GATED))
    run = out["runs"][1]
    assert run["outcome"] == "Promoted"
    assert run["comparison"][0]["passed"] is True
    assert "accuracy 0.97 vs 0.9" in run["message"]
    assert (out["latestPromoted"], out["latestPromotedRun"]) == ("p-2", "p-2")
    assert [e.reason for e in result.events] == ["Promoted"]


def test_still_scoring_the_champion_keeps_the_run_running():
    _, out = _look(_cache(0.90, 0.97, phase="Evaluating"), _status(PROMOTED_1, RUNNING_2), _spec(GATED))
    run = out["runs"][1]
    assert run["outcome"] == "Running"
    assert "scoring champion p-1" in run["message"]
    assert "Evaluating" in run["message"]
    assert out["latestPromoted"] == "p-1"
    assert out["active"] == ["p-2"]


def test_champion_that_cannot_be_scored_fails_the_run_not_serving():
    result, out = _look(_cache(0.90, 0.97, phase="Failed"), _status(PROMOTED_1, RUNNING_2), _spec(GATED))
    run = out["runs"][1]
    assert run["outcome"] == "Failed"
    assert "could not be scored" in run["message"]
    assert "boom" in run["message"]
    assert out["latestPromoted"] == "p-1"
    assert [e.reason for e in result.events] == ["ChampionGateFailed"]


def test_manual_approval_holds_promotion_until_the_annotation_names_the_run():
    spec = _spec({**GATED, "approval": "Manual"})
    cache = _cache(0.90, 0.97)
    _result, out = _look(cache, _status(PROMOTED_1, RUNNING_2), spec)
    run = out["runs"][1]
    assert run["outcome"] == "AwaitingApproval"
    assert "mlops.dev/approve=p-2" in run["message"]
    assert out["latestPromoted"] == "p-1"
    assert out["active"] == []  # training is done: it blocks no trigger
    held, again = _look(cache, out, spec, **{"mlops.dev/approve": "p-9"})
    assert again["runs"][1]["outcome"] == "AwaitingApproval"
    assert held.events == ()
    approved, final = _look(cache, again, spec, **{"mlops.dev/approve": "p-2"})
    assert final["runs"][1]["outcome"] == "Promoted"
    assert final["runs"][1]["message"].startswith("approved (p-2 beat champion p-1")
    assert final["latestPromoted"] == "p-2"
    assert [e.reason for e in approved.events] == ["Promoted"]


def test_first_version_and_ungated_pipelines_promote_without_comparison():
    cache = Cache()
    cache.upsert("Dataset", _dataset(FP1))
    _ready_run(cache, 1, 0.5)
    first = {**RUNNING_2, "name": "p-1", "number": 1, "trainingRun": "p-1", "modelVersion": "p-1"}
    _, out = _look(cache, _status(first, promoted=None), _spec(GATED))
    assert out["runs"][0]["outcome"] == "Promoted"
    assert "first version" in out["runs"][0]["message"]
    assert out["latestPromoted"] == "p-1"


def test_a_scoring_of_an_older_champion_is_redone_for_the_current_one():
    cache = _cache(0.9, 0.97)
    _scored(cache, "p-2", "p-0", "Ready", 0.1)  # scored a champion that is no longer the one
    with pytest.raises(RuntimeError):  # it is deleted and made again: writes need clients
        _look(cache, _status(PROMOTED_1, RUNNING_2), _spec(GATED))
