"""The champion/challenger gate and promotion of a ModelPipeline's runs (I/O side; the decisions are
in builders.champion_gate).

A run whose ModelVersion is Ready is judged against the champion (status.latestPromoted): the
pipeline makes `<run>-champion` to score the champion on the gate's Dataset, waits for it, and
compares. The verdict is final for the run: Rejected (serving untouched), or promoted, after a manual
approval when spec.promotion.approval is Manual. Every step is found again from the cluster on the
next look, so a crash or a lost status write repeats nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping
from typing import Any

from ...api.v1alpha1.modelpipeline import ModelPipelineSpec
from ...builders.champion_gate import (
    AWAITING_APPROVAL,
    CHAMPION_ANNOTATION,
    GATE_FINGERPRINT_ANNOTATION,
    PROMOTED,
    REJECTED,
    Verdict,
    approved,
    build_champion_evaluation,
    champion_evaluation_name,
    compare,
    gate_dataset,
)
from ...builders.modelpipeline import KIND, SUPERSEDED
from ...k8s.conditions import find_condition
from ...k8s.events import Event
from ..base import MAX_MESSAGE
from ..context import ReconcileContext
from ..reads import read_object
from .children import create, delete_champion_evaluation

Run = MutableMapping[str, Any]


def _version(run: Run) -> str:
    """The run's ModelVersion (named as the run)."""
    return str(run.get("modelVersion") or run["name"])


def _approve_hint(ctx: ReconcileContext, run: str) -> str:
    return f"kubectl annotate modelpipeline {ctx.name} -n {ctx.namespace} mlops.dev/approve={run} --overwrite"


def _fingerprint(ctx: ReconcileContext, dataset: str) -> str | None:
    status = (read_object(ctx, "Dataset", "datasets", dataset) or {}).get("status") or {}
    return str(status["fingerprint"]) if status.get("fingerprint") else None


def _score_champion(
    spec: ModelPipelineSpec,
    ctx: ReconcileContext,
    run: Run,
    champion: str,
    evaluations: Mapping[str, Mapping[str, Any]],
) -> Verdict | str | None:
    """The champion's figures on the gate's data: a Verdict when the gate can decide, a message
    (the run fails: the champion cannot be scored) or None (still scoring)."""
    gate = spec.promotion.champion_gate
    assert gate is not None
    name = champion_evaluation_name(str(run["name"]))
    held = evaluations.get(name)
    said = ((held or {}).get("metadata") or {}).get("annotations") or {}
    if held is not None and said.get(CHAMPION_ANNOTATION) != champion:
        delete_champion_evaluation(ctx, str(run["name"]))  # scored an older champion: score the new one
        held = None
    dataset = gate_dataset(spec)
    if held is None:
        champion_obj = read_object(ctx, "ModelVersion", "modelversions", champion)
        assert champion_obj is not None  # judge() checked
        fingerprint = _fingerprint(ctx, str(dataset))
        manifest = build_champion_evaluation(
            {**ctx.body, "kind": KIND},
            spec,
            str(run["name"]),
            int(run["number"]),
            champion=champion_obj,
            fingerprint=fingerprint,
        )
        if manifest is None:
            return f"champion {champion} records no trained model (status.lineage.sourceURI) to score"
        create(ctx, "ModelVersion", "modelversions", manifest)
        run.update(championEvaluation=name, gateDatasetFingerprint=fingerprint)
        run["message"] = f"scoring champion {champion} on Dataset {dataset} (ModelVersion {name})"
        return None
    status = held.get("status") or {}
    phase = status.get("phase")
    run.update(championEvaluation=name)
    if said.get(GATE_FINGERPRINT_ANNOTATION):
        run["gateDatasetFingerprint"] = said[GATE_FINGERPRINT_ANNOTATION]
    if phase == "Ready":
        version = read_object(ctx, "ModelVersion", "modelversions", _version(run)) or {}
        metrics = (version.get("status") or {}).get("metrics") or {}
        return compare(gate, _version(run), metrics, champion, status.get("metrics") or {})
    if phase in ("Failed", "Rejected"):
        why = find_condition(status.get("conditions") or [], "Ready") or {}
        return (
            f"champion {champion} could not be scored on Dataset {dataset} (ModelVersion {name} "
            f"{phase}: {why.get('reason')}: {why.get('message', '')})"
        )
    run["message"] = (
        f"scoring champion {champion} on Dataset {dataset} (ModelVersion {name} is {phase or 'Pending'})"
    )
    return None


def judge(
    spec: ModelPipelineSpec,
    ctx: ReconcileContext,
    run: Run,
    *,
    champion: str | None,
    evaluations: Mapping[str, Mapping[str, Any]],
    now: str,
) -> tuple[list[Event], bool]:
    """Move a run whose ModelVersion is Ready on through the gate: its outcome stays Running while the
    champion is scored, then turns Rejected, Failed or AwaitingApproval; True when it is to be
    promoted (see promote())."""
    events: list[Event] = []
    mine = _version(run)
    if spec.promotion.champion_gate is None:
        verdict: Verdict | str | None = Verdict(True, f"{mine} is Ready (no championGate: promoted as it is)")
    elif champion is None or champion == mine:
        verdict = Verdict(True, f"{mine} is the pipeline's first version: no champion to compare with")
    elif read_object(ctx, "ModelVersion", "modelversions", champion) is None:
        verdict = Verdict(True, f"champion {champion} no longer exists: {mine} promoted without a comparison")
        events.append(Event("ChampionMissing", f"run {run['name']}: {verdict.message}", "Warning"))
    else:
        run["champion"] = champion
        verdict = _score_champion(spec, ctx, run, champion, evaluations)
    if verdict is None:
        return events, False
    if isinstance(verdict, str):
        run.update(
            outcome="Failed", completionTime=now, message=f"{verdict}; serving is untouched"[:MAX_MESSAGE]
        )
        events.append(
            Event("ChampionGateFailed", f"run {run['name']}: {run['message']}"[:MAX_MESSAGE], "Warning")
        )
        return events, False
    run["comparison"] = [dict(row) for row in verdict.comparison]
    if not verdict.passed:
        serving = f"serving is untouched (still {champion})" if champion else "serving is untouched"
        run.update(
            outcome=REJECTED, completionTime=now, message=f"{verdict.message}; {serving}"[:MAX_MESSAGE]
        )
        events.append(Event("ChallengerRejected", f"run {run['name']}: {run['message']}"[:MAX_MESSAGE]))
        return events, False
    if spec.promotion.approval == "Manual" and not approved(
        ctx.body["metadata"].get("annotations"), str(run["name"])
    ):
        run.update(
            outcome=AWAITING_APPROVAL,
            message=f"{verdict.message}; waiting for approval: {_approve_hint(ctx, str(run['name']))}"[
                :MAX_MESSAGE
            ],
        )
        events.append(Event("AwaitingApproval", f"run {run['name']}: {run['message']}"[:MAX_MESSAGE]))
        return events, False
    run["message"] = verdict.message[:MAX_MESSAGE]
    return events, True


def promote(run: Run, runs: list[dict[str, Any]], now: str, fields: dict[str, Any]) -> Event:
    """Promote the run's ModelVersion: it is what the pipeline serves now; runs still awaiting approval
    from before it are superseded by it."""
    run.update(outcome=PROMOTED, completionTime=now)
    for other in runs:
        if (
            other is not run
            and other.get("outcome") == AWAITING_APPROVAL
            and int(other["number"]) < int(run["number"])
        ):
            other.update(
                outcome=SUPERSEDED, completionTime=now, message=f"run {run['name']} was promoted after it"
            )
    fields.update(latestPromoted=_version(run), latestPromotedRun=run["name"], latestPromotedTime=now)
    return Event(
        "Promoted",
        f"run {run['name']} promoted ModelVersion {_version(run)}: {run.get('message') or ''}"[:MAX_MESSAGE],
    )
