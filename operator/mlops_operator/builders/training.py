"""Pure builders of a TrainingRun's workload, and pure readings of what the workload did.

`build_job` / `build_rendezvous_service` turn the spec (+ the Dataset it trains on, the attempt and
operator settings) into manifests. No I/O here: the handler applies, these are tested as plain data.
Reading what a workload did is `observation.training`.

The environment handed to the trainer is the contract of trainer-image/README.md ("Environment
contract"), its names in `mlops_contract.envvars`: MLOPS_* settings, AWS_* for S3, WANDB_* for
tracking; secrets only as secretKeyRefs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from mlops_contract import envvars
from mlops_contract.result import TERMINATION_MESSAGE_PATH

from ..api.v1alpha1 import API_VERSION, DatasetSpec, TrainingRunSpec
from ..k8s.naming import MAX_NAME, common_labels, dns_label, owner_reference, uid_label
from .pod import WORKLOAD_UID, apply_scheduling, hardened_container, hardened_pod_spec, kueue_labels, s3_env

KIND = "TrainingRun"
RENDEZVOUS_PORT = 29500
ATTEMPT_LABEL = "mlops.dev/attempt"
RUN_LABEL = "mlops.dev/trainingrun"
CONTAINER = "trainer"
TRAINER_UID = WORKLOAD_UID


RUN_UID_LABEL = uid_label(KIND)  # selects the pods of one run, whatever its name
# An Indexed Job's pod hostname is `<job>-<index>` (index < 256), and it must be a DNS label.
MAX_JOB_NAME = MAX_NAME - len("-255")


def job_name(run: str, attempt: int) -> str:
    return dns_label(run, f"a{attempt}", max_length=MAX_JOB_NAME)


def service_name(run: str) -> str:
    """The rendezvous Service: a DNS-1035 label (a letter first, no dots), also the pods' subdomain."""
    return dns_label(run, "rdzv", dns1035=True)


def spec_hash(spec: TrainingRunSpec) -> str:
    """Hash of what a started run may not change (everything but suspend and the TTL)."""
    frozen = spec.wire()
    frozen.pop("suspend", None)
    frozen.pop("ttlSecondsAfterFinished", None)
    return hashlib.sha256(json.dumps(frozen, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class TrainingInputs:
    """Everything the workload of one attempt depends on."""

    name: str
    namespace: str
    uid: str
    spec: TrainingRunSpec
    dataset: DatasetSpec
    dataset_fingerprint: str
    attempt: int
    default_image: str
    extra_tolerations: Sequence[Mapping[str, Any]] = field(default_factory=tuple)
    scratch_size_limit: str = "20Gi"  # MLOPS_SCRATCH_SIZE_LIMIT
    shm_size_limit: str | None = None  # MLOPS_SHM_SIZE_LIMIT; None: from resources.memory

    @property
    def distributed(self) -> bool:
        return self.spec.distributed.nodes > 1

    @property
    def job_name(self) -> str:
        return job_name(self.name, self.attempt)


def _owner(inputs: TrainingInputs) -> dict[str, Any]:
    run = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": inputs.name, "uid": inputs.uid}}
    return owner_reference(run)


def _labels(inputs: TrainingInputs) -> dict[str, str]:
    labels = common_labels(KIND, inputs.name, component="trainer")
    labels[RUN_UID_LABEL] = inputs.uid
    labels[ATTEMPT_LABEL] = str(inputs.attempt)
    labels.update(kueue_labels(inputs.spec.scheduling))
    return labels


def _env(inputs: TrainingInputs) -> list[dict[str, Any]]:
    spec, source = inputs.spec, inputs.dataset.source
    env: list[dict[str, Any]] = [
        {"name": envvars.MODEL, "value": spec.model},
        {"name": envvars.DATASET_URI, "value": source.uri},
        {"name": envvars.DATASET_FINGERPRINT, "value": inputs.dataset_fingerprint},
        {"name": envvars.OUTPUT_URI, "value": spec.output.uri},
        {"name": envvars.HYPERPARAMETERS, "value": json.dumps(spec.hyperparameters, sort_keys=True)},
        {"name": envvars.RUN_NAME, "value": f"{inputs.namespace}-{inputs.name}"},
        {"name": envvars.ATTEMPT, "value": str(inputs.attempt)},
        {"name": envvars.TERMINATION_MESSAGE_PATH, "value": TERMINATION_MESSAGE_PATH},
        # The root filesystem is read-only; libraries that write under $HOME (wandb) get the scratch volume.
        {"name": "HOME", "value": "/tmp"},  # noqa: S108 - an emptyDir, not the host's /tmp
    ]
    if spec.checkpoint:
        env += [
            {"name": envvars.CHECKPOINT_URI, "value": spec.checkpoint.uri},
            {"name": envvars.CHECKPOINT_INTERVAL_STEPS, "value": str(spec.checkpoint.interval_steps)},
        ]
    env += s3_env(
        endpoint_url=source.endpoint_url, region=source.region, credentials=source.credentials_secret_ref
    )
    wandb = spec.tracking.wandb
    if wandb:
        env += [
            {"name": envvars.WANDB_PROJECT, "value": wandb.project},
            {"name": envvars.WANDB_MODE, "value": wandb.mode},
        ]
        if wandb.entity:
            env.append({"name": envvars.WANDB_ENTITY, "value": wandb.entity})
        if wandb.api_key_secret_ref:
            ref = wandb.api_key_secret_ref
            env.append(
                {
                    "name": envvars.WANDB_API_KEY,
                    "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}},
                }
            )
    else:
        env.append({"name": envvars.WANDB_MODE, "value": "disabled"})
    if inputs.distributed:
        # The pod's index in the Indexed Job is its torchrun node rank.
        env.append(
            {
                "name": envvars.NODE_RANK,
                "valueFrom": {
                    "fieldRef": {
                        "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
                    }
                },
            }
        )
    return env


def _command(inputs: TrainingInputs) -> tuple[list[str], list[str]]:
    spec = inputs.spec
    args = list(spec.args) if spec.args is not None else ["train"]
    if spec.command is not None:
        return list(spec.command), args
    procs = spec.distributed.procs_per_node
    if inputs.distributed:
        master = f"{inputs.job_name}-0.{service_name(inputs.name)}"
        launcher = [
            "torchrun",
            f"--nnodes={spec.distributed.nodes}",
            f"--nproc-per-node={procs}",
            f"--node-rank=$({envvars.NODE_RANK})",
            f"--master-addr={master}",
            f"--master-port={RENDEZVOUS_PORT}",
            "-m",
            "mlops_trainer",
        ]
        return launcher, args
    if procs > 1:
        return ["torchrun", "--standalone", f"--nproc-per-node={procs}", "-m", "mlops_trainer"], args
    return ["mlops-trainer"], args


def _resources(inputs: TrainingInputs) -> dict[str, Any]:
    res = inputs.spec.resources
    limits: dict[str, str] = {}
    if res.gpus_per_worker:
        limits["nvidia.com/gpu"] = str(res.gpus_per_worker)
    if res.cpu:
        limits["cpu"] = res.cpu
    if res.memory:
        limits["memory"] = res.memory
    out: dict[str, Any] = {"limits": limits} if limits else {}
    requests = {k: v for k, v in limits.items() if k != "nvidia.com/gpu"}
    if requests:
        out["requests"] = requests
    return out


_QUANTITY = re.compile(r"^([+-]?[0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?$")
_MULTIPLIERS = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(1000) ** (i + 1) for i, s in enumerate(("k", "M", "G", "T", "P", "E"))},
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
}
DEFAULT_SHM = "1Gi"  # /dev/shm when the spec sets no memory and the operator no MLOPS_SHM_SIZE_LIMIT


def quantity_bytes(quantity: str) -> int | None:
    """A memory quantity in bytes (rounded down), or None where it is not one we can read."""
    match = _QUANTITY.match(quantity.strip())
    if not match:
        return None
    number, suffix = match.groups()
    try:
        value = Decimal(number)
        if suffix and suffix[0] in "eE":
            value *= Decimal(10) ** int(suffix[1:])
        elif suffix:
            value *= _MULTIPLIERS[suffix]
    except (InvalidOperation, ValueError):
        return None
    return int(value)


def shm_size_limit(inputs: TrainingInputs) -> str:
    """The shm volume's sizeLimit: the operator's setting, else half the worker's memory (the rest is for
    the trainer itself: a memory-backed emptyDir counts against the pod's memory), else 1Gi."""
    if inputs.shm_size_limit:
        return inputs.shm_size_limit
    memory = quantity_bytes(inputs.spec.resources.memory or "")
    if not memory:
        return DEFAULT_SHM
    half = memory // 2
    mib = 1024 * 1024
    return f"{half // mib}Mi" if half >= mib else str(max(half, 1))


def build_job(inputs: TrainingInputs) -> dict[str, Any]:
    spec = inputs.spec
    labels = _labels(inputs)
    command, args = _command(inputs)
    container = hardened_container(
        name=CONTAINER,
        image=spec.image or inputs.default_image,
        command=command,
        args=args,
        env=_env(inputs),
        resources=_resources(inputs),
    )
    pod_spec = hardened_pod_spec(
        service_account_name=spec.service_account_name,
        containers=[container],
        scratch_size_limit=inputs.scratch_size_limit,
        shm_size_limit=shm_size_limit(inputs),
        termination_grace_seconds=120,  # time to write a checkpoint on SIGTERM
    )
    apply_scheduling(
        pod_spec,
        spec.scheduling,
        uses_gpus=bool(spec.resources.gpus_per_worker),
        gpu_product=spec.resources.gpu_product,
        extra_tolerations=inputs.extra_tolerations,
    )
    job_spec: dict[str, Any] = {
        # Attempts are the operator's: it retries with backoff and resumes from the checkpoint.
        "backoffLimit": 0,
        "completions": spec.distributed.nodes,
        "parallelism": spec.distributed.nodes,
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if inputs.distributed:
        job_spec["completionMode"] = "Indexed"
        pod_spec["subdomain"] = service_name(inputs.name)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": inputs.job_name,
            "namespace": inputs.namespace,
            "labels": labels,
            "ownerReferences": [_owner(inputs)],
        },
        "spec": job_spec,
    }


def build_rendezvous_service(inputs: TrainingInputs) -> dict[str, Any]:
    """Headless Service giving each worker pod a DNS name (<job>-<index>.<service>) for torchrun."""
    labels = common_labels(KIND, inputs.name, component="rendezvous")
    labels[RUN_UID_LABEL] = inputs.uid
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(inputs.name),
            "namespace": inputs.namespace,
            "labels": labels,
            "ownerReferences": [_owner(inputs)],
        },
        "spec": {
            "clusterIP": "None",
            # Workers must find each other before they are Ready.
            "publishNotReadyAddresses": True,
            "selector": {RUN_UID_LABEL: inputs.uid},
            "ports": [{"name": "rendezvous", "port": RENDEZVOUS_PORT, "targetPort": RENDEZVOUS_PORT}],
        },
    }


def backoff_seconds(failed_attempt: int, base: int, cap: int) -> int:
    """Exponential backoff after `failed_attempt` (1-based): base, 2*base, 4*base ... up to cap."""
    return int(min(cap, base * 2 ** max(0, failed_attempt - 1)))
