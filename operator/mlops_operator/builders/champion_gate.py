"""The champion/challenger gate of a ModelPipeline: pure decisions, no I/O.

A run's ModelVersion (the challenger) is evaluated on the gate's Dataset. The version the pipeline
promoted last (the champion) is scored again on the same Dataset by a ModelVersion the pipeline
makes for that, `<run>-champion`: the champion's trained model, compiled and evaluated as the
champion was, without gates or registry. The challenger must win on every metric by its margin.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..api.v1alpha1.common import API_VERSION, GROUP
from ..api.v1alpha1.modelpipeline import ChampionGate, ModelPipelineSpec
from ..k8s.naming import common_labels, owner_reference

KIND = "ModelPipeline"
# On a champion-scoring ModelVersion: the run it scores the champion for, and which champion.
CHAMPION_OF_LABEL = f"{GROUP}/champion-of-run"
CHAMPION_ANNOTATION = f"{GROUP}/champion"
GATE_FINGERPRINT_ANNOTATION = f"{GROUP}/gate-dataset-fingerprint"
PROMOTED, AWAITING_APPROVAL, REJECTED = "Promoted", "AwaitingApproval", "Rejected"


def champion_evaluation_name(run: str) -> str:
    return f"{run}-champion"


def gate_dataset(spec: ModelPipelineSpec) -> str | None:
    """The Dataset both versions are scored on (None: no gate)."""
    gate = spec.promotion.champion_gate
    if gate is None:
        return None
    return (gate.dataset_ref or spec.dataset_ref).name


def challenger_evaluation(spec: ModelPipelineSpec, version: dict[str, Any]) -> dict[str, Any]:
    """The run's ModelVersion spec, evaluated on the gate's Dataset and split (the data the champion
    is scored on too)."""
    gate = spec.promotion.champion_gate
    if gate is None:
        return version
    dataset = gate_dataset(spec)
    evaluation = {**version.get("evaluation", {}), "datasetRef": {"name": dataset}, "split": gate.split}
    return {**version, "evaluation": evaluation}


def build_champion_evaluation(
    owner: Mapping[str, Any],
    spec: ModelPipelineSpec,
    run: str,
    number: int,
    *,
    champion: Mapping[str, Any],
    fingerprint: str | None,
) -> dict[str, Any] | None:
    """The ModelVersion that scores the champion on the gate's data: its trained model (lineage
    sourceURI), its compile and evaluation settings, the gate's Dataset and split; no gates, no
    registry. None when the champion records no trained model to score."""
    gate = spec.promotion.champion_gate
    source = ((champion.get("status") or {}).get("lineage") or {}).get("sourceURI")
    if gate is None or not source:
        return None
    held: Mapping[str, Any] = champion.get("spec") or {}
    version: dict[str, Any] = {
        "modelName": held.get("modelName"),
        "source": {"artifactURI": str(source)},
        "evaluation": {
            **(held.get("evaluation") or {}),
            "datasetRef": {"name": gate_dataset(spec)},
            "split": gate.split,
        },
    }
    for key in ("compile", "scheduling", "serviceAccountName"):
        if held.get(key) is not None:
            version[key] = held[key]
    meta = owner["metadata"]
    annotations = {CHAMPION_ANNOTATION: str(champion["metadata"]["name"])}
    if fingerprint:
        annotations[GATE_FINGERPRINT_ANNOTATION] = fingerprint
    return {
        "apiVersion": API_VERSION,
        "kind": "ModelVersion",
        "metadata": {
            "name": champion_evaluation_name(run),
            "namespace": meta["namespace"],
            "labels": {
                **common_labels(KIND, meta["name"], "champion-evaluation"),
                CHAMPION_OF_LABEL: str(number),
            },
            "annotations": annotations,
            "ownerReferences": [owner_reference({**owner, "kind": KIND})],
        },
        "spec": version,
    }


@dataclass(frozen=True)
class Verdict:
    """The gate's answer for one challenger."""

    passed: bool
    message: str
    comparison: Sequence[Mapping[str, Any]] = field(default_factory=tuple)


# Winning by exactly the margin passes: 0.94 - 0.93 is 0.00999… in floating point.
_ROUNDING = 1e-9


def _figure(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def compare(
    gate: ChampionGate,
    challenger: str,
    challenger_metrics: Mapping[str, Any],
    champion: str,
    champion_metrics: Mapping[str, Any],
) -> Verdict:
    """Whether the challenger beats the champion on every metric by its margin (a metric either side
    did not report fails: the gate never promotes on a figure it does not have)."""
    rows: list[dict[str, Any]] = []
    lost: list[str] = []
    for wanted in gate.metrics:
        mine, theirs = (
            _figure(challenger_metrics.get(wanted.name)),
            _figure(champion_metrics.get(wanted.name)),
        )
        if mine is None or theirs is None:
            passed = False
            who = " and ".join(
                n for n, v in ((challenger, mine), (f"champion {champion}", theirs)) if v is None
            )
            lost.append(f"{wanted.name}: not reported by {who}")
        else:
            gain = mine - theirs if wanted.direction == "HigherIsBetter" else theirs - mine
            passed = gain >= wanted.margin - _ROUNDING
            if not passed:
                lost.append(
                    f"{wanted.name} {mine:.4g} vs champion {theirs:.4g} "
                    f"({'higher' if wanted.direction == 'HigherIsBetter' else 'lower'} is better, "
                    f"needs a margin of {wanted.margin:g})"
                )
        rows.append(
            {
                "name": wanted.name,
                "challenger": mine,
                "champion": theirs,
                "direction": wanted.direction,
                "margin": wanted.margin,
                "passed": passed,
            }
        )
    figures = ", ".join(
        f"{r['name']} {r['challenger']:.4g} vs {r['champion']:.4g}"
        for r in rows
        if r["challenger"] is not None and r["champion"] is not None
    )
    if lost:
        return Verdict(False, f"{challenger} did not beat champion {champion}: {'; '.join(lost)}", rows)
    return Verdict(True, f"{challenger} beat champion {champion} ({figures})", rows)


def approved(annotations: Mapping[str, Any] | None, run: str) -> bool:
    """Manual approval: the pipeline's annotation mlops.dev/approve names the run (a comma-separated
    list may name several)."""
    text = str((annotations or {}).get(f"{GROUP}/approve") or "")
    return run in {part.strip() for part in text.split(",")}
