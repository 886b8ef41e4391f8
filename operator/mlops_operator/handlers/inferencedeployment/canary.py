"""Why a Rollout's canary was aborted: its analysis found a metric breached (`AnalysisFailed`), its
analysis could not measure (`MetricsUnavailable`: Prometheus down is not the model's fault), or a
person aborted it (`ManuallyAborted`: `kubectl argo rollouts abort`, status.abort with no failed
AnalysisRun)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from ...k8s.rawapi import resource_path
from ...observation.serving import analysis_verdict
from ..context import ReconcileContext

UNREADABLE_ANALYSIS = "its AnalysisRun could not be read"
MANUALLY_ABORTED = "ManuallyAborted"
# Ready reasons of an aborted canary; an aborted canary's AnalysisRuns do not change, so these are
# read once (the status keeps what they said).
ABORT_REASONS = frozenset({"AnalysisFailed", "MetricsUnavailable", MANUALLY_ABORTED})


def abort_reason(ctx: ReconcileContext, rollout: Mapping[str, Any]) -> tuple[str, str]:
    """(reason, message) of the Rollout's abort, from the AnalysisRuns of the aborted revision."""
    # Only the aborted revision's runs (Argo Rollouts labels them with the pod template hash).
    pod_hash = (rollout.get("status") or {}).get("currentPodHash")
    query = [("labelSelector", f"rollouts-pod-template-hash={pod_hash}")] if pod_hash else []
    try:
        runs = (
            ctx.require_clients()
            .raw.request("GET", resource_path("AnalysisRun", ctx.namespace), query=query)
            .get("items", [])
        )
    except ApiException:
        return "AnalysisFailed", f"the analysis failed ({UNREADABLE_ANALYSIS})"
    uid = rollout["metadata"].get("uid")
    mine = [r for r in runs if any(o.get("uid") == uid for o in r["metadata"].get("ownerReferences", []))]
    verdict = analysis_verdict(mine)
    if verdict is not None:
        return verdict
    return MANUALLY_ABORTED, (
        "aborted by hand (kubectl argo rollouts abort), no analysis failed; `kubectl argo rollouts "
        f"retry rollout {rollout['metadata'].get('name')}` resumes it, or point spec.modelVersionRef at "
        "another version"
    )
