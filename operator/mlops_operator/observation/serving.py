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
