"""What keeps a serving workload from running its current version, as its status and its pods say.

Pure: the handler hands in the workload (Rollout or Deployment) and the pods of the
InferenceDeployment from the watch cache. Both workload kinds report `ReplicaFailure` (pods that
cannot be created: quota, a missing ServiceAccount, admission) and `Progressing=False
ProgressDeadlineExceeded`; the pods say what the workload does not: an image that does not pull, a
container (the fetch init container or tritonserver) that keeps crashing, no node to run on.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .pods import STUCK_REASONS, stuck_container, unschedulable

# A server that starts and dies (its model does not load, the repository cannot be fetched) loops;
# for a long-running pod that is as much a reason to look as an image that does not pull.
SERVING_STUCK_REASONS = STUCK_REASONS | {"CrashLoopBackOff"}


def serving_problem(
    workload: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], pod_template_hash: str | None = None
) -> tuple[str, str] | None:
    """(reason, message) of the first thing that keeps the workload's current pods from running, or
    None. With `pod_template_hash`, only the pods of that revision count (a canary's)."""
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "ReplicaFailure" and cond.get("status") == "True":
            return str(cond.get("reason") or "ReplicaFailure"), str(cond.get("message") or "")
        if (
            cond.get("type") == "Progressing"
            and cond.get("status") == "False"
            and cond.get("reason") == "ProgressDeadlineExceeded"
        ):
            return "ProgressDeadlineExceeded", str(cond.get("message") or "")
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        if pod_template_hash and pod_template_hash not in (
            labels.get("rollouts-pod-template-hash"),
            labels.get("pod-template-hash"),
        ):
            continue
        if meta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        if stuck := stuck_container(pod, SERVING_STUCK_REASONS, init_containers=True):
            return stuck[0], f"pod {meta.get('name')}: {stuck[1]}"
        if why := unschedulable(pod):
            return "Unschedulable", f"pod {meta.get('name')}: {why}"
    return None


# -- the workload as a whole -----------------------------------------------------------------------------

ROLLOUTS_HASH_LABEL = "rollouts-pod-template-hash"
DEFAULT_MAX_UNAVAILABLE = "25%"  # Kubernetes' and Argo Rollouts' default for a rolling or canary update


def workload_fault(workload: Mapping[str, Any]) -> tuple[str, str] | None:
    """(reason, message) when Argo Rollouts refuses the Rollout's spec (its InvalidSpec condition):
    it does nothing with it until the spec changes."""
    for cond in (workload.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "InvalidSpec" and cond.get("status") == "True":
            return "RolloutInvalidSpec", f"Argo Rollouts refuses the Rollout: {cond.get('message') or ''}"
    return None


def observed_current(workload: Mapping[str, Any]) -> bool:
    """Whether the workload's controller has observed its latest spec (Argo Rollouts writes
    observedGeneration as a string, the Deployment controller as an integer)."""
    observed = (workload.get("status") or {}).get("observedGeneration")
    return observed is not None and str(observed) == str((workload.get("metadata") or {}).get("generation"))


def _percent_or_int(value: Any, total: int) -> int:
    if isinstance(value, str) and value.endswith("%"):
        return total * int(value[:-1]) // 100  # rounded down, as both controllers do for maxUnavailable
    return int(value)


def minimum_available(workload: Mapping[str, Any], kind: str, desired: int) -> int:
    """Ready replicas the workload must have to be serving at all: `desired` less what its update
    strategy lets go unavailable (Kubernetes' own "minimum availability"); all of them for recreate."""
    strategy = (workload.get("spec") or {}).get("strategy") or {}
    if kind == "Rollout":
        allowed = (strategy.get("canary") or {}).get("maxUnavailable", DEFAULT_MAX_UNAVAILABLE)
    elif strategy.get("type") == "Recreate":
        allowed = 0
    else:
        allowed = (strategy.get("rollingUpdate") or {}).get("maxUnavailable", DEFAULT_MAX_UNAVAILABLE)
    try:
        unavailable = _percent_or_int(allowed, desired)
    except ValueError:
        unavailable = 0
    return max(1, desired - unavailable) if desired else 0


def pod_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def real_canary_weight(rollout: Mapping[str, Any], pods: Iterable[Mapping[str, Any]]) -> int | None:
    """The share of traffic the canary really gets, percent: the traffic router's weight where Argo
    Rollouts reports one (status.canary.weights), else, with no router, the canary's share of the
    ready serving pods (a Service splits by pods). None while the Rollout has not observed its spec
    (its status then describes the previous revision)."""
    if not observed_current(rollout):
        return None
    status = rollout.get("status") or {}
    weights = ((status.get("canary") or {}).get("weights") or {}).get("canary") or {}
    if weights.get("weight") is not None:
        return int(weights["weight"])
    current, stable = status.get("currentPodHash"), status.get("stableRS")
    if not current or current == stable:
        return 0
    ready = [p for p in pods if pod_ready(p)]
    if not ready:
        return 0
    canary = sum(
        1
        for p in ready
        if ((p.get("metadata") or {}).get("labels") or {}).get(ROLLOUTS_HASH_LABEL) == current
    )
    return round(100 * canary / len(ready))


# -- the canary's analysis -------------------------------------------------------------------------------


def _condition_of(run: Mapping[str, Any], metric: str) -> str:
    for spec in (run.get("spec") or {}).get("metrics") or []:
        if spec.get("name") == metric:
            if spec.get("failureCondition"):
                return f"failure condition {spec['failureCondition']}"
            if spec.get("successCondition"):
                return f"success condition {spec['successCondition']} not met"
    return "its condition"


def analysis_verdict(runs: Iterable[Mapping[str, Any]]) -> tuple[str, str] | None:
    """Why the latest of these AnalysisRuns (one Rollout's, one revision's) ended badly: a metric that
    breached its condition (Failed: `AnalysisFailed`, naming the metric, its value and the condition)
    or one that could not be measured (Error: `MetricsUnavailable`, with the provider's message, e.g.
    Prometheus down: not the model's fault). None when none ended Failed or Error."""
    ended = [r for r in runs if (r.get("status") or {}).get("phase") in ("Failed", "Error")]
    if not ended:
        return None
    latest = max(ended, key=lambda r: str((r.get("metadata") or {}).get("creationTimestamp")))
    status = latest.get("status") or {}
    breached, unmeasured = [], []
    for result in status.get("metricResults") or []:
        measurements = result.get("measurements") or []
        last = measurements[-1] if measurements else {}
        name = result.get("name")
        if result.get("phase") == "Failed":
            breached.append(
                f"{name} = {last.get('value')} breached its {_condition_of(latest, str(name))} "
                f"({result.get('failed', 0)} failed measurement(s))"
            )
        elif result.get("phase") == "Error":
            why = last.get("message") or result.get("message") or status.get("message") or "no measurement"
            unmeasured.append(
                f"{name} could not be measured ({result.get('consecutiveError', 0)} errors in a row): {why}"
            )
    if breached or status.get("phase") == "Failed":
        return "AnalysisFailed", "; ".join(breached) or str(status.get("message") or "the analysis failed")
    return "MetricsUnavailable", "; ".join(unmeasured) or str(status.get("message") or "the analysis errored")
