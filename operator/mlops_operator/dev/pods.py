"""Deciding a simulated pod's fate, as a kubelet would report it.

kwok makes scheduled pods Running and leaves them there (see kwok.yaml). Two ways to end them:
- annotate the pod template with `sim.mlops.dev/exit-code` (+ `sim.mlops.dev/termination-message`,
  `sim.mlops.dev/run-for`): kwok terminates it by itself;
- call these helpers, which patch pod status through the status subresource exactly as a kubelet
  does: terminated containers with an exit code and termination message, or an eviction.
Workload results travel through the container's termination message, so a test can hand the
operator any result the trainer could produce.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

EXIT_CODE_ANNOTATION = "sim.mlops.dev/exit-code"
MESSAGE_ANNOTATION = "sim.mlops.dev/termination-message"
RUN_FOR_ANNOTATION = "sim.mlops.dev/run-for"


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def terminated_status(
    pod: dict[str, Any], exit_code: int, message: str = "", reason: str | None = None
) -> dict[str, Any]:
    """The status a kubelet reports when every container of `pod` exited with `exit_code`."""
    now = _now()
    containers = pod["spec"]["containers"]
    return {
        "phase": "Succeeded" if exit_code == 0 else "Failed",
        "conditions": [
            {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
            {
                "type": "ContainersReady",
                "status": "False",
                "reason": "PodCompleted",
                "lastTransitionTime": now,
            },
        ],
        "containerStatuses": [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "started": False,
                "state": {
                    "terminated": {
                        "exitCode": exit_code,
                        "reason": reason or ("Completed" if exit_code == 0 else "Error"),
                        "message": message,
                        "startedAt": now,
                        "finishedAt": now,
                    }
                },
            }
            for c in containers
        ],
    }


def evicted_status(message: str = "The node was low on resource: memory.") -> dict[str, Any]:
    """The status of a pod the kubelet evicted (phase Failed, reason Evicted)."""
    now = _now()
    return {
        "phase": "Failed",
        "reason": "Evicted",
        "message": message,
        "conditions": [
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "TerminationByKubelet",
                "message": message,
                "lastTransitionTime": now,
            }
        ],
    }


def finish_pod(core: Any, namespace: str, name: str, exit_code: int = 0, message: str = "") -> dict[str, Any]:
    """End a running pod with `exit_code` and a termination message. `core` is a CoreV1Api."""
    pod = core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, namespace))
    status = terminated_status(pod, exit_code, message)
    result: dict[str, Any] = core.patch_namespaced_pod_status(name, namespace, {"status": status}).to_dict()
    return result


def evict_pod(
    core: Any, namespace: str, name: str, message: str = "The node was low on resource: memory."
) -> None:
    core.patch_namespaced_pod_status(name, namespace, {"status": evicted_status(message)})
