"""The pod hardening and scheduling every workload the operator makes shares (training, compile,
evaluate, serving).

One place, so a Job of any stage runs as the trainer image's non-root user, with a read-only root
filesystem, no capabilities, no API token, and size-limited scratch volumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mlops_contract.result import TERMINATION_MESSAGE_PATH

from ..api.v1alpha1.common import PodScheduling, Scheduling

WORKLOAD_UID = 10001  # the trainer image's user (trainer-image/Dockerfile)
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# GPU nodes are commonly tainted nvidia.com/gpu:NoSchedule so only GPU workloads land there.
GPU_TOLERATION = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}


def pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": WORKLOAD_UID,
        "runAsGroup": WORKLOAD_UID,
        "fsGroup": WORKLOAD_UID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def hardened_container(
    *,
    name: str,
    image: str,
    command: Sequence[str],
    args: Sequence[str],
    env: Sequence[Mapping[str, Any]],
    resources: Mapping[str, Any],
) -> dict[str, Any]:
    """A workload container: the result summary in the termination message, no privilege, writable
    only where the scratch volumes are mounted."""
    return {
        "name": name,
        "image": image,
        "command": list(command),
        "args": list(args),
        "env": [dict(e) for e in env],
        "resources": dict(resources),
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        # The workload writes its JSON summary there; if it crashes first, the log tail stands in.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir, not the host's /tmp
            {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108
        ],
    }


def scratch_volumes(scratch_size_limit: str, shm_size_limit: str) -> list[dict[str, Any]]:
    # Every emptyDir has a sizeLimit: a workload filling the node's disk or memory is evicted, not
    # its neighbours.
    return [
        {"name": "scratch", "emptyDir": {"sizeLimit": scratch_size_limit}},
        # DataLoader workers pass batches through shared memory; the default 64 MiB is too small.
        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size_limit}},
    ]


def hardened_pod_spec(
    *,
    service_account_name: str | None,
    containers: Sequence[Mapping[str, Any]],
    scratch_size_limit: str,
    shm_size_limit: str,
    termination_grace_seconds: int = 30,
) -> dict[str, Any]:
    return {
        "restartPolicy": "Never",
        "serviceAccountName": service_account_name or "default",
        # Workloads talk to S3 and W&B, never to the Kubernetes API.
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": termination_grace_seconds,
        "securityContext": pod_security_context(),
        "containers": [dict(c) for c in containers],
        "volumes": scratch_volumes(scratch_size_limit, shm_size_limit),
    }


def s3_env(*, endpoint_url: str | None, region: str | None, credentials: Any | None) -> list[dict[str, Any]]:
    """AWS_* for the workload's S3 client: the endpoint and region as values, keys only as
    secretKeyRefs (`credentials`: a Dataset source's `credentialsSecretRef`)."""
    from mlops_contract import envvars  # noqa: PLC0415

    env: list[dict[str, Any]] = []
    if endpoint_url:
        env.append({"name": envvars.AWS_ENDPOINT_URL_S3, "value": endpoint_url})
    if region:
        env.append({"name": envvars.AWS_REGION, "value": region})
    if credentials:
        pairs = [
            (envvars.AWS_ACCESS_KEY_ID, credentials.access_key_id_key),
            (envvars.AWS_SECRET_ACCESS_KEY, credentials.secret_access_key_key),
        ]
        if credentials.session_token_key:
            pairs.append((envvars.AWS_SESSION_TOKEN, credentials.session_token_key))
        env += [
            {"name": n, "valueFrom": {"secretKeyRef": {"name": credentials.name, "key": k}}} for n, k in pairs
        ]
    return env


def apply_scheduling(
    pod_spec: dict[str, Any],
    scheduling: PodScheduling,
    *,
    uses_gpus: bool,
    gpu_product: str | None,
    extra_tolerations: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """Add the spec's scheduling to `pod_spec`: its node selector and tolerations, the GPU taint's
    toleration for pods that use GPUs, the GPU product as a node selector (an engine runs only on
    the GPU model it was built for), the operator-wide extra tolerations and the priority class."""
    node_selector = dict(scheduling.node_selector)
    tolerations = [t.wire() for t in scheduling.tolerations]
    if uses_gpus:
        tolerations.append(dict(GPU_TOLERATION))
    if gpu_product:
        node_selector[GPU_PRODUCT_LABEL] = gpu_product
    tolerations += [dict(t) for t in extra_tolerations]
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    if tolerations:
        pod_spec["tolerations"] = tolerations
    if scheduling.priority_class_name:
        pod_spec["priorityClassName"] = scheduling.priority_class_name
    return pod_spec


KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
KUEUE_PRIORITY_LABEL = "kueue.x-k8s.io/priority-class"


def kueue_labels(scheduling: Scheduling) -> dict[str, str]:
    """The labels that hand a batch Job to Kueue: its LocalQueue and WorkloadPriorityClass."""
    labels = {}
    if scheduling.queue_name:
        labels[KUEUE_QUEUE_LABEL] = scheduling.queue_name
    if scheduling.workload_priority_class_name:
        labels[KUEUE_PRIORITY_LABEL] = scheduling.workload_priority_class_name
    return labels
