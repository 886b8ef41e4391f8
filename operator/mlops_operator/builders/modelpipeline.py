"""ModelPipeline: the pure decisions (which trigger fires, run names and children, concurrency policy,
history pruning, drift that retraining cannot fix). No I/O; the handler reads and writes.

Triggers seen in the same look are answered by one run on the current data (the first of Manual,
Drift, DatasetChange, Schedule names it; the others are marked handled by it). What a run handled
is written on its children too (annotation `mlops.dev/pipeline-handled`), so a run made just before
a crash is adopted on the next look instead of being made twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from croniter import croniter

from ..api.v1alpha1.common import API_VERSION, GROUP
from ..api.v1alpha1.modelpipeline import ModelPipelineSpec
from ..k8s.naming import common_labels, owner_reference
from ..timeutil import from_rfc3339, to_rfc3339
from .champion_gate import challenger_evaluation

KIND = "ModelPipeline"
TRIGGER_ANNOTATION = f"{GROUP}/trigger"
RUN_LABEL = f"{GROUP}/pipeline-run"
PIPELINE_LABEL = f"{GROUP}/modelpipeline"
HANDLED_ANNOTATION = f"{GROUP}/pipeline-handled"
# Status markers of handled triggers (their values are the triggers' keys).
MARKERS = ("lastDatasetFingerprint", "lastScheduleTime", "lastDriftTransition", "lastManualTrigger")
MAX_HISTORY = 20  # entries kept in status.runs (running ones always)
RUNNING, SKIPPED, SUPERSEDED = "Running", "Skipped", "Superseded"
PROMOTED, AWAITING_APPROVAL = "Promoted", "AwaitingApproval"
# Not an outcome: what run_outcome says when the run's ModelVersion is Ready (the gate decides next).
VERSION_READY = "VersionReady"
# Runs whose model was trained (and scored): a drift on the data they trained on is not fixed by another.
TRAINED = frozenset({PROMOTED, AWAITING_APPROVAL, "Rejected"})


def run_name(pipeline: str, number: int) -> str:
    """The run's name, which its TrainingRun and ModelVersion both take."""
    return f"{pipeline}-{number}"


@dataclass(frozen=True)
class Observed:
    """What one look sees besides the spec and status."""

    dataset_fingerprint: str | None  # None while the Dataset is missing or not Ready
    drifted: bool = False  # the DriftMonitor's Drifted condition is True
    drift_transition: str | None = None  # ... since this time
    manual: str | None = None  # the mlops.dev/trigger annotation
    created: datetime | None = None


@dataclass(frozen=True)
class Trigger:
    kind: str  # DatasetChange | Schedule | Drift | Manual
    key: str


@dataclass(frozen=True)
class Decision:
    """The triggers that fire now, the markers they set, and the drift that cannot be fixed."""

    triggers: tuple[Trigger, ...] = ()
    markers: Mapping[str, str] = field(default_factory=dict)
    next_schedule: datetime | None = None
    unfixable: str | None = None  # a message when a drift turned up on unchanged training data


def last_trained(runs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The newest run that trained and scored a model (promoted, awaiting approval or rejected)."""
    return next((r for r in reversed(runs) if r.get("outcome") in TRAINED), None)


def decide(spec: ModelPipelineSpec, status: Mapping[str, Any], seen: Observed, now: datetime) -> Decision:
    """Pure: which triggers fire now (nothing while suspended or while the Dataset has no fingerprint)."""
    triggers: list[Trigger] = []
    markers: dict[str, str] = {}
    schedule = spec.triggers.schedule
    anchor_text = status.get("lastScheduleTime")
    anchor = from_rfc3339(str(anchor_text)) if anchor_text else (seen.created or now)
    next_schedule = croniter(schedule, max(anchor, now)).get_next(datetime) if schedule else None
    if spec.suspend or seen.dataset_fingerprint is None:
        return Decision(next_schedule=next_schedule)
    fingerprint = seen.dataset_fingerprint
    unfixable = None
    if seen.manual and seen.manual != status.get("lastManualTrigger"):
        triggers.append(Trigger("Manual", seen.manual))
        markers["lastManualTrigger"] = seen.manual
    changed = fingerprint != status.get("lastDatasetFingerprint")
    if (
        spec.triggers.drift_monitor_ref is not None
        and seen.drifted
        and seen.drift_transition
        and seen.drift_transition != status.get("lastDriftTransition")
    ):
        markers["lastDriftTransition"] = seen.drift_transition
        good = last_trained(status.get("runs") or [])
        if good is not None and good.get("datasetFingerprint") == fingerprint and not triggers:
            unfixable = (
                f"drifted, training data unchanged since run {good.get('number')} "
                f"(fingerprint {fingerprint}): retraining on the same data cannot fix it; land labelled "
                "data that covers the shift"
            )
        else:
            triggers.append(Trigger("Drift", seen.drift_transition))
    if spec.triggers.on_dataset_change and changed:
        triggers.append(Trigger("DatasetChange", fingerprint))
    if schedule:
        latest = croniter(schedule, now).get_prev(datetime)
        if latest > anchor:
            triggers.append(Trigger("Schedule", to_rfc3339(latest)))
            markers["lastScheduleTime"] = to_rfc3339(latest)
    if triggers or not status.get("lastDatasetFingerprint"):
        # A run trains on the current data; with none, the current data is the baseline to change from.
        markers["lastDatasetFingerprint"] = fingerprint
    return Decision(tuple(triggers), markers, next_schedule, None if triggers else unfixable)


def unfixable_holds(
    held: Mapping[str, Any] | None, seen: Observed, runs: Sequence[Mapping[str, Any]]
) -> bool:
    """Whether a DriftUnfixable=True still stands: the monitor still says Drifted and the training data
    is still what the last run that trained a model trained on."""
    if held is None or held.get("status") != "True" or not seen.drifted:
        return False
    good = last_trained(runs)
    return good is not None and good.get("datasetFingerprint") == seen.dataset_fingerprint


@dataclass(frozen=True)
class Plan:
    """What to do with the triggers under the concurrency policy."""

    start: bool
    supersede: tuple[str, ...] = ()  # active runs to replace (their children are deleted)
    skipped_because: str | None = None


def plan(policy: str, active: Sequence[str]) -> Plan:
    """CronJob's concurrency policies: Allow starts beside the active runs, Forbid skips the trigger
    while a run is active, Replace supersedes the active runs and starts the new one."""
    if not active or policy == "Allow":
        return Plan(True)
    if policy == "Forbid":
        return Plan(
            False, skipped_because=f"run {', '.join(active)} is still active (concurrencyPolicy Forbid)"
        )
    return Plan(True, supersede=tuple(active))


def run_outcome(training: Mapping[str, Any] | None, version: Mapping[str, Any] | None) -> tuple[str, str]:
    """A run's outcome from its children: VERSION_READY when the ModelVersion is Ready (the champion
    gate decides the outcome), Rejected when its acceptance gates rejected it, Failed when either
    failed; Running otherwise."""
    tr_phase = ((training or {}).get("status") or {}).get("phase")
    mv_phase = ((version or {}).get("status") or {}).get("phase")
    if mv_phase == "Ready":
        return VERSION_READY, "the ModelVersion is Ready"
    if mv_phase == "Rejected":
        return "Rejected", "the ModelVersion's acceptance gates rejected it"
    if mv_phase == "Failed":
        return "Failed", "the ModelVersion failed"
    if tr_phase == "Failed":
        return "Failed", "the TrainingRun failed"
    return RUNNING, f"TrainingRun {tr_phase or 'Pending'}, ModelVersion {mv_phase or 'Pending'}"


def to_prune(
    runs: Sequence[Mapping[str, Any]],
    successful_limit: int,
    failed_limit: int,
    keep: frozenset[str] = frozenset(),
) -> list[str]:
    """Finished runs whose children go (newest kept per limit: Promoted ones count as successful; the
    names in `keep`, e.g. the promoted version's run, always stay; runs awaiting approval stay).
    Superseded runs' children are deleted when they are replaced."""
    out: list[str] = []
    good = bad = 0
    for run in reversed(runs):
        outcome = run.get("outcome")
        if (
            run.get("childrenDeleted")
            or outcome in (RUNNING, SKIPPED, SUPERSEDED, AWAITING_APPROVAL)
            or not run.get("trainingRun")
        ):
            continue
        if outcome == PROMOTED:
            good += 1
            over = good > successful_limit
        else:
            bad += 1
            over = bad > failed_limit
        if over and run["name"] not in keep:
            out.append(str(run["name"]))
    return out


def cap_history(runs: list[dict[str, Any]], limit: int = MAX_HISTORY) -> list[dict[str, Any]]:
    """The newest `limit` entries, running and waiting ones always kept."""
    if len(runs) <= limit:
        return runs
    excess = len(runs) - limit
    kept: list[dict[str, Any]] = []
    for run in runs:
        if excess > 0 and run.get("outcome") not in (RUNNING, AWAITING_APPROVAL):
            excess -= 1
            continue
        kept.append(run)
    return kept


def next_number(status: Mapping[str, Any], child_numbers: Sequence[int]) -> int:
    """One more than any number used: in status or on a child (a child made before a crash counts)."""
    return max([int(status.get("lastRunNumber") or 0), *child_numbers]) + 1


# -- children -----------------------------------------------------------------------------------------


def _labels(pipeline: str, number: int) -> dict[str, str]:
    return {**common_labels(KIND, pipeline, "pipeline-run"), RUN_LABEL: str(number)}


def _meta(owner: Mapping[str, Any], number: int, handled: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {
        "name": run_name(meta["name"], number),
        "namespace": meta["namespace"],
        "labels": _labels(meta["name"], number),
        "annotations": {HANDLED_ANNOTATION: json.dumps(dict(handled), sort_keys=True)},
        "ownerReferences": [owner_reference({**owner, "kind": KIND})],
    }


def _under(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}/"


def build_children(
    owner: Mapping[str, Any], spec: ModelPipelineSpec, number: int, handled: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The run's TrainingRun (on the pipeline's Dataset, writing under the template's output and
    checkpoint prefixes + <run>/) and ModelVersion (of that TrainingRun)."""
    name = run_name(owner["metadata"]["name"], number)
    training = spec.training_run_template.wire()
    training.pop("datasetRef", None)
    training["datasetRef"] = {"name": spec.dataset_ref.name}
    training["output"] = {**training["output"], "uri": _under(training["output"]["uri"], name)}
    if "checkpoint" in training:
        training["checkpoint"] = {
            **training["checkpoint"],
            "uri": _under(training["checkpoint"]["uri"], name),
        }
    version = challenger_evaluation(spec, spec.model_version_template.wire())
    version["source"] = {"trainingRunRef": {"name": name}}
    return (
        {
            "apiVersion": API_VERSION,
            "kind": "TrainingRun",
            "metadata": _meta(owner, number, handled),
            "spec": training,
        },
        {
            "apiVersion": API_VERSION,
            "kind": "ModelVersion",
            "metadata": _meta(owner, number, handled),
            "spec": version,
        },
    )


def handled_record(
    trigger: Trigger, fingerprint: str, markers: Mapping[str, str], also: Sequence[str]
) -> dict[str, Any]:
    """What a run's children carry: its trigger, the data and the markers it set."""
    return {
        "trigger": trigger.kind,
        "key": trigger.key,
        "fingerprint": fingerprint,
        "markers": dict(markers),
        "also": list(also),
    }


def adopted_entry(
    pipeline: str, number: int, handled: Mapping[str, Any], created: str | None
) -> dict[str, Any]:
    """The history entry of a run found by its children but missing from status (made before a crash)."""
    name = run_name(pipeline, number)
    return {
        "name": name,
        "number": number,
        "trigger": handled.get("trigger") or "Manual",
        "triggerKey": handled.get("key"),
        "datasetFingerprint": handled.get("fingerprint"),
        "trainingRun": name,
        "modelVersion": name,
        "startTime": created,
        "outcome": RUNNING,
        "message": "adopted: its children were found before status recorded it",
    }


def parse_handled(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def time_text(value: datetime | None) -> str | None:
    return to_rfc3339(value) if value else None
