"""The InferenceDeployment's status from its workload's (Rollout or Deployment), its pods and, for an
aborted canary, its AnalysisRuns.

Nothing is claimed that was not observed:
- `Ready=True` only while at least the required replicas are ready (spec.replicas, or the
  autoscaler's minimum, less what the update strategy lets go unavailable; all of them for
  recreate), counting a workload of the other kind that still serves during a hand-over; the
  message says which version serves on how many;
- a Rollout status that has not observed the Rollout's latest spec says nothing about the new
  revision: no step, no weight read from it;
- the canary weight is the real share: the traffic router's where Argo Rollouts reports one, else
  the canary's share of the ready serving pods (without a router a Service splits by pods);
- an aborted canary says who aborted it: its analysis (a breached metric, `AnalysisFailed`, or no
  measurement, `MetricsUnavailable`), a person (`ManuallyAborted`), or the operator because the
  canary's ModelVersion went away (`CanaryAborted`, the stable still Ready).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ...api.v1alpha1 import InferenceDeploymentSpec
from ...builders.serving import UID_LABEL, ServingInputs, endpoint
from ...k8s.conditions import ConditionUpdate, find_condition
from ...k8s.events import Event
from ...metrics import ROLLOUTS_ABORTED, ROLLOUTS_PROMOTED
from ...observation.serving import (
    minimum_available,
    observed_current,
    real_canary_weight,
    serving_problem,
    workload_fault,
)
from ..base import MAX_MESSAGE, READY, Outcome
from ..context import ReconcileContext
from .canary import ABORT_REASONS, UNREADABLE_ANALYSIS, abort_reason
from .version import template_version

CANARY_WAITING = "CanaryWaiting"
CANARY_ABORTED = "CanaryAborted"  # Ready reason: the operator aborted a canary whose version went away
INSUFFICIENT = "InsufficientReplicas"
FALLBACK = "WorkloadFallback"


def ready(status: str, reason: str, message: str) -> ConditionUpdate:
    return ConditionUpdate(READY, status, reason, message[:MAX_MESSAGE])  # type: ignore[arg-type]


@dataclass(frozen=True)
class Situation:
    """What the reconcile decided besides the workload: read by `observe`."""

    inputs: ServingInputs | None = None  # the version rolled out, when the spec's could be
    waiting: tuple[str, str] | None = None  # why the spec's version waits (CanaryWaiting)
    withdrawn: tuple[str, str] | None = None  # why the operator aborted the canary (its version went)
    note: tuple[str, str] | None = None  # what is wrong with the stable's ModelVersion (it serves on)
    fallback: str | None = None  # why a Deployment serves in place of a canary Rollout
    other: Mapping[str, Any] | None = None  # the other kind's workload, still serving in a hand-over


def serving_pods(ctx: ReconcileContext) -> Iterator[Mapping[str, Any]]:
    for pod in ctx.cache.in_namespace("Pod", ctx.namespace):
        if (pod["metadata"].get("labels") or {}).get(UID_LABEL) == ctx.uid:
            yield pod


def _settled(kind: str, workload: Mapping[str, Any]) -> bool:
    """Whether every pod of the workload runs its current template (a finished rollout)."""
    observed = workload.get("status") or {}
    if not observed_current(workload):
        return False
    if kind == "Rollout":
        return (
            bool(observed.get("stableRS"))
            and observed.get("stableRS") == observed.get("currentPodHash")
            and (observed.get("phase") == "Healthy")
        )
    replicas = int((workload.get("spec") or {}).get("replicas") or 0)
    return (
        int(observed.get("updatedReplicas") or 0) >= replicas
        and int(observed.get("availableReplicas") or 0) >= replicas
    )


def _counts(workload: Mapping[str, Any] | None) -> tuple[int, int]:
    if workload is None or workload["metadata"].get("deletionTimestamp"):
        return 0, 0
    observed = workload.get("status") or {}
    return int(observed.get("replicas") or 0), int(observed.get("readyReplicas") or 0)


def observe(
    spec: InferenceDeploymentSpec,
    ctx: ReconcileContext,
    kind: str,
    workload: Mapping[str, Any],
    situation: Situation,
) -> Outcome:
    """The InferenceDeployment's status from its workload's."""
    status = ctx.status
    observed = workload.get("status") or {}
    inputs = situation.inputs
    serving = template_version(workload) or status.get("modelVersion")
    stable = status.get("stableVersion")
    current = observed_current(workload)
    replicas, ready_count = _counts(workload)
    other_replicas, other_ready = _counts(situation.other)
    replicas, ready_count = replicas + other_replicas, ready_count + other_ready
    desired = spec.autoscaling.min_replicas if spec.autoscaling is not None else spec.replicas
    required = minimum_available(workload, kind, desired)
    enough = ready_count >= required
    capacity = f"{ready_count}/{replicas} replicas ready, {required} required"
    step = observed.get("currentStepIndex") if kind == "Rollout" and current else None
    fields: dict[str, Any] = {
        "workloadKind": kind,
        "modelVersion": serving,
        "replicas": replicas,
        "readyReplicas": ready_count,
        "currentStep": step,
        "endpoint": endpoint(inputs) if inputs else status.get("endpoint"),
    }
    said: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    waiting = situation.withdrawn or situation.waiting
    waiting_condition = (
        ConditionUpdate(CANARY_WAITING, "True", waiting[0], waiting[1][:MAX_MESSAGE])
        if waiting
        else ConditionUpdate(CANARY_WAITING, "False", "NothingWaiting", "")
    )
    events: tuple[Event, ...] = ()
    pods = list(serving_pods(ctx))

    def short(reason: str) -> tuple[str, str]:
        """Ready=False for too few ready replicas: what keeps the pods from running, if known."""
        problem = serving_problem(
            workload, pods, observed.get("currentPodHash") if kind == "Rollout" else None
        )
        return (problem[0], f"{capacity}: {problem[1]}") if problem else (reason, capacity)

    if kind == "Rollout" and (fault := workload_fault(workload)):
        return Outcome("Degraded", (ready("False", *fault), waiting_condition), fields)

    if kind == "Rollout" and observed.get("abort"):
        fields |= {"canaryVersion": serving, "canaryWeight": 0}
        if situation.withdrawn:
            message = (
                f"the canary of {serving} was aborted ({situation.withdrawn[1]}); "
                f"{stable or 'the stable version'} keeps 100%: {capacity}"
            )
            if enough:
                return Outcome(
                    "Degraded", (ready("True", CANARY_ABORTED, message), waiting_condition), fields
                )
            reason, why = short(INSUFFICIENT)
            return Outcome(
                "Degraded", (ready("False", reason, f"{message}; {why}"), waiting_condition), fields
            )
        if status.get("phase") != "Degraded":
            ROLLOUTS_ABORTED.labels(namespace=ctx.namespace).inc()
        if (
            status.get("phase") == "Degraded"
            and status.get("canaryVersion") == serving
            and said.get("reason") in ABORT_REASONS
            and UNREADABLE_ANALYSIS not in str(said.get("message"))
        ):
            # Already said why: an aborted canary's AnalysisRuns do not change, so read them once.
            reason, message = str(said.get("reason")), str(said.get("message"))
        else:
            reason, why = abort_reason(ctx, workload)
            message = (
                f"the canary of {serving} was aborted, {stable or 'the stable version'} keeps 100%: {why}"
            )
        return Outcome("Degraded", (ready("False", reason, message), waiting_condition), fields)

    where = fields["endpoint"]
    if _settled(kind, workload):
        if stable and stable != serving:
            ROLLOUTS_PROMOTED.labels(namespace=ctx.namespace).inc()
            events = (Event("Promoted", f"{serving} replaced {stable}: it serves all traffic"),)
        fields |= {"stableVersion": serving, "canaryVersion": None, "canaryWeight": None}
        if not enough:
            reason, why = short(INSUFFICIENT)
            message = f"{serving} has too few ready replicas ({why})"
            return Outcome(
                "Degraded", (ready("False", reason, message), waiting_condition), fields, events=events
            )
        message = f"{serving} serves on {ready_count} ready replica(s) at {where}"
        reason = "Available"
        if situation.note:
            reason, message = situation.note[0], f"{message}; but {situation.note[1]}"
            if said.get("reason") != reason:
                events = (*events, Event("ServedModelVersionGone", situation.note[1], "Warning"))
        elif situation.fallback:
            reason, message = FALLBACK, f"{message}; {situation.fallback}"
        return Outcome(
            "Available", (ready("True", reason, message), waiting_condition), fields, events=events
        )

    problem = serving_problem(workload, pods, observed.get("currentPodHash") if kind == "Rollout" else None)
    if not stable:
        fields |= {"canaryVersion": None, "canaryWeight": None}
        if problem:
            message = f"{serving} does not start ({capacity}): {problem[1]}"
            return Outcome("Progressing", (ready("False", problem[0], message), waiting_condition), fields)
        message = f"{serving} is starting: {capacity}"
        return Outcome("Progressing", (ready("False", "Starting", message), waiting_condition), fields)
    if kind == "Deployment" or stable == serving:
        # One version at a time: the Deployment replaces its pods (recreate: all at once), or the
        # stable version's pods are being replaced or scaled.
        fields |= {"canaryVersion": None, "canaryWeight": None}
        doing = f"{serving} serves" if stable == serving else f"rolling out {serving} in place of {stable}"
        if not enough:
            reason, why = short(INSUFFICIENT)
            return Outcome(
                "Progressing", (ready("False", reason, f"{doing}: {why}"), waiting_condition), fields
            )
        message = f"{doing}: {capacity}"
        if situation.fallback:
            message += f"; {situation.fallback}"
        return Outcome("Progressing", (ready("True", "Available", message), waiting_condition), fields)
    if problem and not waiting:
        # The old version serves; what keeps the new pods from running is the canary's wait.
        said_waiting = find_condition(status.get("conditions", []), CANARY_WAITING) or {}
        message = f"the pods of {serving} do not start: {problem[1]}"[:MAX_MESSAGE]
        waiting_condition = ConditionUpdate(CANARY_WAITING, "True", problem[0], message)
        if said_waiting.get("status") != "True" or said_waiting.get("reason") != problem[0]:
            events = (Event(problem[0], message, type="Warning"),)
    weight = real_canary_weight(workload, pods)
    if weight is None:  # the Rollout has not observed its spec yet: the previous weight, if any
        weight = int(status.get("canaryWeight") or 0) if status.get("canaryVersion") == serving else 0
    fields |= {"canaryVersion": serving, "canaryWeight": weight}
    message = f"canary {serving} at {weight}% (step {step}), {stable} stable; {capacity}"
    if not enough:
        reason, why = short(INSUFFICIENT)
        message = f"canary {serving}, {stable} stable: {why}"
        return Outcome(
            "Progressing", (ready("False", reason, message), waiting_condition), fields, events=events
        )
    if observed.get("phase") == "Paused":
        message += f"; paused: {observed.get('message') or 'waiting to be promoted'}"
        return Outcome("Paused", (ready("True", "Paused", message), waiting_condition), fields, events=events)
    return Outcome(
        "Progressing", (ready("True", "CanaryProgressing", message), waiting_condition), fields, events=events
    )
