"""ModelPipeline reconcile: follow the runs' children, turn triggers into runs, prune history.

Level-based. Each look:
1. Adopts a run whose children exist but status does not record (made just before a crash or a
   lost status write): the children carry the run number (label) and what the run handled
   (annotation), so the trigger is never answered twice.
2. Follows each running run's TrainingRun and ModelVersion to its outcome (`run_outcome`), and puts
   back a missing child of a running run.
3. Asks `builders.modelpipeline.decide` which triggers fire; under the concurrency policy (`plan`) it
   skips them (Forbid), supersedes the active runs (Replace: their children deleted) or starts a run.
   Starting a run creates its TrainingRun and ModelVersion `<pipeline>-<n>` (create, never update:
   a run's spec is its template when it started).
4. Deletes the children of finished runs beyond the history limits.
A drift on unchanged training data starts no run: DriftUnfixable=True (TrainingDataUnchanged) and a
Warning event; it clears when the data changes or the monitor no longer says Drifted.
A run whose ModelVersion is Ready goes through the champion/challenger gate (gate.py): Promoted
(status.latestPromoted, what following InferenceDeployments serve), AwaitingApproval, or Rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ...api.v1alpha1.modelpipeline import ModelPipelineSpec
from ...builders.champion_gate import approved
from ...builders.modelpipeline import (
    AWAITING_APPROVAL,
    HANDLED_ANNOTATION,
    KIND,
    MARKERS,
    RUNNING,
    SKIPPED,
    TRIGGER_ANNOTATION,
    VERSION_READY,
    Observed,
    adopted_entry,
    build_children,
    cap_history,
    decide,
    handled_record,
    next_number,
    parse_handled,
    plan,
    run_name,
    run_outcome,
    time_text,
    to_prune,
    unfixable_holds,
)
from ...engine.cache import Cache, ObjectKey
from ...k8s.conditions import ConditionUpdate, find_condition
from ...k8s.events import Event
from ...timeutil import from_rfc3339, to_rfc3339
from ..base import MAX_MESSAGE, Outcome, Result, ready
from ..context import ReconcileContext
from ..reads import read_object
from .children import CHILDREN, champion_evaluations, create, delete_run, runs_children, supersede
from .gate import judge, promote

DRIFT_UNFIXABLE = "DriftUnfixable"


def _observe(spec: ModelPipelineSpec, ctx: ReconcileContext) -> tuple[Observed, str | None]:
    """What the triggers look at, and why the pipeline waits (None: it does not)."""
    created_text = ctx.body["metadata"].get("creationTimestamp")
    created = from_rfc3339(str(created_text)) if created_text else None
    manual = (ctx.body["metadata"].get("annotations") or {}).get(TRIGGER_ANNOTATION)
    drifted, transition = False, None
    if spec.triggers.drift_monitor_ref is not None:
        monitor = read_object(ctx, "DriftMonitor", "driftmonitors", spec.triggers.drift_monitor_ref.name)
        held = find_condition(((monitor or {}).get("status") or {}).get("conditions") or [], "Drifted") or {}
        drifted, transition = held.get("status") == "True", held.get("lastTransitionTime")
    dataset = read_object(ctx, "Dataset", "datasets", spec.dataset_ref.name)
    status = (dataset or {}).get("status") or {}
    ok = (find_condition(status.get("conditions") or [], "Ready") or {}).get("status") == "True"
    fingerprint = status.get("fingerprint") if ok else None
    waiting = None
    if dataset is None:
        waiting = f"Dataset {spec.dataset_ref.name} does not exist"
    elif not fingerprint:
        waiting = f"Dataset {spec.dataset_ref.name} is not Ready"
    seen = Observed(
        str(fingerprint) if fingerprint else None, drifted, transition and str(transition), manual, created
    )
    return seen, waiting


def reconcile(spec: ModelPipelineSpec, ctx: ReconcileContext) -> Result:
    status = ctx.status
    now = ctx.now()
    now_text = to_rfc3339(now)
    runs: list[dict[str, Any]] = [dict(r) for r in status.get("runs") or []]
    fields: dict[str, Any] = {}
    events: list[Event] = []
    children = runs_children(ctx)

    # 1. Adopt runs that exist only as children.
    known = {int(r.get("number") or 0) for r in runs}
    for number in sorted(set(children) - known):
        if number <= int(status.get("lastRunNumber") or 0):
            continue  # an old run whose entry was capped away
        first = next(iter(children[number].values()))
        handled = parse_handled((first["metadata"].get("annotations") or {}).get(HANDLED_ANNOTATION))
        runs.append(adopted_entry(ctx.name, number, handled, first["metadata"].get("creationTimestamp")))
        fields.update({k: v for k, v in (handled.get("markers") or {}).items() if k in MARKERS})
        fields["lastRunNumber"] = max(number, int(status.get("lastRunNumber") or 0))
    marked = {k: fields.get(k, status.get(k)) for k in MARKERS}

    # Replace: only the newest running run stays (also after a crash between starting a run and
    # superseding the one before it: the new run's children are made first).
    if spec.concurrency_policy == "Replace":
        running = [r for r in runs if r.get("outcome") == RUNNING]
        newest = max((int(r["number"]) for r in running), default=0)
        for run in running:
            if int(run["number"]) < newest:
                supersede(ctx, run, run_name(ctx.name, newest), now_text)

    # 2. Follow the running runs through training and the champion gate; promote approved ones.
    champion = status.get("latestPromoted")
    evaluations = champion_evaluations(ctx)
    for run in runs:
        if run.get("outcome") == AWAITING_APPROVAL and approved(
            ctx.body["metadata"].get("annotations"), str(run["name"])
        ):
            verdict = str(run.get("message") or "").split("; waiting for approval")[0]
            run["message"] = f"approved ({verdict})"[:MAX_MESSAGE]
            events.append(promote(run, runs, now_text, fields))
            champion = fields["latestPromoted"]
        if run.get("outcome") != RUNNING:
            continue
        number = int(run["number"])
        held = children.get(number, {})
        outcome, message = run_outcome(held.get("TrainingRun"), held.get("ModelVersion"))
        if outcome == VERSION_READY:
            said, promoted = judge(spec, ctx, run, champion=champion, evaluations=evaluations, now=now_text)
            events.extend(said)
            if promoted:
                events.append(promote(run, runs, now_text, fields))
                champion = fields["latestPromoted"]
        elif outcome != RUNNING:
            run.update(outcome=outcome, message=message, completionTime=now_text)
        else:
            run["message"] = message
            if len(held) < len(CHILDREN):  # a child of a running run went missing: put it back
                owner = {**ctx.body, "kind": KIND}
                handled = parse_handled(None)
                for obj in held.values():
                    handled = parse_handled(
                        (obj["metadata"].get("annotations") or {}).get(HANDLED_ANNOTATION)
                    )
                training, version = build_children(owner, spec, number, handled)
                for (kind, plural), manifest in zip(CHILDREN, (training, version), strict=True):
                    if kind not in held:
                        create(ctx, kind, plural, manifest)

    # 3. Triggers.
    seen, waiting = _observe(spec, ctx)
    decision = decide(spec, {**marked, "runs": runs}, seen, now)
    active = [str(r["name"]) for r in runs if r.get("outcome") == RUNNING]
    if decision.triggers:
        assert seen.dataset_fingerprint is not None
        trigger, also = decision.triggers[0], [t.kind for t in decision.triggers[1:]]
        number = next_number({**status, **fields}, list(children))
        name = run_name(ctx.name, number)
        entry: dict[str, Any] = {
            "name": name,
            "number": number,
            "trigger": trigger.kind,
            "triggerKey": trigger.key[:256],
            "datasetFingerprint": seen.dataset_fingerprint,
            "startTime": now_text,
        }
        todo = plan(spec.concurrency_policy, active)
        if not todo.start:
            runs.append(
                {**entry, "outcome": SKIPPED, "completionTime": now_text, "message": todo.skipped_because}
            )
            events.append(Event("RunSkipped", f"{trigger.kind} trigger skipped: {todo.skipped_because}"))
        else:
            handled = handled_record(trigger, seen.dataset_fingerprint, decision.markers, also)
            training, version = build_children({**ctx.body, "kind": KIND}, spec, number, handled)
            create(ctx, "TrainingRun", "trainingruns", training)
            create(ctx, "ModelVersion", "modelversions", version)
            for run in runs:  # after the new run's children exist (a crash in between is healed above)
                if run["name"] in todo.supersede and run.get("outcome") == RUNNING:
                    supersede(ctx, run, name, now_text)
            why = f" (also answers {', '.join(also)})" if also else ""
            runs.append(
                {
                    **entry,
                    "trainingRun": name,
                    "modelVersion": name,
                    "outcome": RUNNING,
                    "message": f"started by {trigger.kind}{why}",
                }
            )
            events.append(Event("RunStarted", f"run {name} started by {trigger.kind} {trigger.key}{why}"))
        fields["lastRunNumber"] = number
        fields["lastTrigger"] = trigger.kind
        fields["lastTriggerTime"] = now_text
    fields.update(decision.markers)

    # Drift that retraining cannot fix.
    conditions: list[ConditionUpdate] = []
    held_unfixable = find_condition(status.get("conditions") or [], DRIFT_UNFIXABLE)
    if decision.unfixable:
        conditions.append(
            ConditionUpdate(
                DRIFT_UNFIXABLE, "True", "TrainingDataUnchanged", decision.unfixable[:MAX_MESSAGE]
            )
        )
        if (held_unfixable or {}).get("status") != "True":
            events.append(Event(DRIFT_UNFIXABLE, decision.unfixable[:MAX_MESSAGE], "Warning"))
    elif unfixable_holds(held_unfixable, seen, runs):
        assert held_unfixable is not None
        conditions.append(
            ConditionUpdate(
                DRIFT_UNFIXABLE, "True", "TrainingDataUnchanged", str(held_unfixable.get("message") or "")
            )
        )
    elif held_unfixable is not None:
        conditions.append(
            ConditionUpdate(
                DRIFT_UNFIXABLE, "False", "TrainingDataChanged" if seen.drifted else "NotDrifted", ""
            )
        )

    # 4. History limits.
    keep = frozenset({str(champion)} if champion else ())
    for name in to_prune(runs, spec.successful_runs_history_limit, spec.failed_runs_history_limit, keep):
        delete_run(ctx, name)
        for run in runs:
            if run["name"] == name:
                run["childrenDeleted"] = True
    runs = cap_history(runs)

    active = [str(r["name"]) for r in runs if r.get("outcome") == RUNNING]
    last = next((r for r in reversed(runs) if r.get("outcome") != SKIPPED), runs[-1] if runs else None)
    if spec.suspend:
        phase, reason, message = "Suspended", "Suspended", "spec.suspend: no new runs start"
    elif waiting:
        phase, reason, message = "Pending", "DatasetNotReady", f"{waiting}: no run can start"
    elif active:
        phase, reason, message = "Running", "RunActive", f"running: {', '.join(active)}"
    else:
        phase, reason, message = "Idle", "Idle", "waiting for a trigger"
    ready_status = "False" if waiting else "True"
    conditions.insert(0, ready(ready_status, reason, message))
    fields.update(
        runs=runs,
        active=active,
        lastOutcome=(last or {}).get("outcome"),
        nextScheduleTime=time_text(decision.next_schedule),
    )
    wait = (decision.next_schedule - now).total_seconds() if decision.next_schedule else None
    return Outcome(
        phase, tuple(conditions), fields, tuple(events), max(1.0, wait) if wait is not None else None
    )


# -- what wakes a ModelPipeline -----------------------------------------------------------------------


def _keys(cache: Cache, body: Mapping[str, Any], matches: Any) -> Iterable[ObjectKey]:
    meta = body.get("metadata") or {}
    namespace, name = str(meta.get("namespace")), str(meta.get("name"))
    for pipeline in cache.in_namespace(KIND, namespace):
        if matches(pipeline.get("spec") or {}, name):
            yield (KIND, namespace, str(pipeline["metadata"]["name"]))


def watching_dataset(cache: Cache, body: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """Pipelines training on this Dataset (a new fingerprint is a trigger)."""
    return _keys(cache, body, lambda spec, name: (spec.get("datasetRef") or {}).get("name") == name)


def watching_monitor(cache: Cache, body: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """Pipelines triggered by this DriftMonitor."""
    return _keys(
        cache,
        body,
        lambda spec, name: ((spec.get("triggers") or {}).get("driftMonitorRef") or {}).get("name") == name,
    )


def owning_run(cache: Cache, body: Mapping[str, Any]) -> Iterable[ObjectKey]:
    """The pipeline a TrainingRun or ModelVersion belongs to (its run's outcome follows it)."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("kind") == KIND and ref.get("controller"):
            key = cache.key_of_uid(str(ref.get("uid")))
            if key is not None and key[1] == (body.get("metadata") or {}).get("namespace"):
                yield key
