"""Kueue (v0.17, API `kueue.x-k8s.io/v1beta2`) in the local control plane: pure builders.

Two kinds of documents:
- what the control plane needs to run a real Kueue manager (`kueue` from hack/build-tools.sh): its
  configuration file, its webhook configurations rewritten to a loopback URL, and its CRDs with the
  conversion webhook upstream's kustomization adds;
- the queueing objects tests and `mlopsctl dev` users create: ResourceFlavors (one per GPU product),
  ClusterQueues, LocalQueues and WorkloadPriorityClasses.

Kueue v0.17 serves v1beta1 and v1beta2 of its API and stores v1beta2 (the CRDs' `storage: true`);
everything here is v1beta2 (e.g. a ClusterQueue's `cohortName`, v1beta1's `cohort`).
"""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

API_VERSION = "kueue.x-k8s.io/v1beta2"
CONFIG_API_VERSION = "config.kueue.x-k8s.io/v1beta2"
# The label a Job names its LocalQueue with, and the one naming its WorkloadPriorityClass.
QUEUE_NAME_LABEL = "kueue.x-k8s.io/queue-name"
PRIORITY_CLASS_LABEL = "kueue.x-k8s.io/priority-class"
# The label Kueue puts on a Job's Workload: the Job's uid.
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"
GPU = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
# The names upstream's kustomization (namePrefix `kueue-`) gives its webhook configurations.
MUTATING_WEBHOOK_CONFIGURATION = "kueue-mutating-webhook-configuration"
VALIDATING_WEBHOOK_CONFIGURATION = "kueue-validating-webhook-configuration"
# The CRDs upstream's config/components/crd/kustomization.yaml gives a conversion webhook
# (v1beta1 <-> v1beta2, served by the manager at /convert).
CONVERSION_CRDS = (
    "localqueues.kueue.x-k8s.io",
    "clusterqueues.kueue.x-k8s.io",
    "cohorts.kueue.x-k8s.io",
    "workloads.kueue.x-k8s.io",
    "multikueueclusters.kueue.x-k8s.io",
)
# Upstream's webhook kustomization keeps these webhooks (every Pod, Deployment and StatefulSet) off
# kube-system and Kueue's own namespace.
_NAMESPACE_SCOPED_WEBHOOKS = (
    "mpod.kb.io",
    "mdeployment.kb.io",
    "mstatefulset.kb.io",
    "vpod.kb.io",
    "vdeployment.kb.io",
    "vstatefulset.kb.io",
)
KUEUE_NAMESPACE = "kueue-system"
# The toleration of the kwok nodes' taint (controlplane.KWOK_TOLERATION), as a flavor adds it.
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}


@dataclass(frozen=True)
class KueueServing:
    """Where the local manager listens (all on 127.0.0.1) and where its files are."""

    webhook_port: int
    health_port: int
    metrics_port: int
    cert_dir: str  # holds tls.crt/tls.key: a serving certificate for 127.0.0.1


def manager_config(
    serving: KueueServing, frameworks: Sequence[str] = ("batch/job",), namespace: str = KUEUE_NAMESPACE
) -> dict[str, Any]:
    """The manager's `--config` (config.kueue.x-k8s.io/v1beta2 Configuration): its webhook on a
    loopback port with a certificate we issue (internal cert management off), no leader election, only
    Jobs that name a LocalQueue managed, waitForPodsReady off (absent), the visibility server off."""
    return {
        "apiVersion": CONFIG_API_VERSION,
        "kind": "Configuration",
        "namespace": namespace,
        # Its probes: controller-runtime's defaults, /readyz (up once the webhook server is) and /healthz.
        "health": {"healthProbeBindAddress": f"127.0.0.1:{serving.health_port}"},
        "metrics": {"bindAddress": f"127.0.0.1:{serving.metrics_port}"},
        "webhook": {"port": serving.webhook_port, "host": "127.0.0.1", "certDir": serving.cert_dir},
        "leaderElection": {"leaderElect": False},
        "internalCertManagement": {"enable": False},
        "manageJobsWithoutQueueName": False,
        "integrations": {"frameworks": list(frameworks)},
        # The on-demand visibility API server (an aggregated apiserver) would need an APIService.
        "featureGates": {"VisibilityOnDemand": False},
    }


def _ca_bundle(ca_pem: bytes) -> str:
    return base64.b64encode(ca_pem).decode()


def loopback_webhooks(
    documents: Sequence[Mapping[str, Any]], port: int, ca_pem: bytes
) -> list[dict[str, Any]]:
    """Upstream's webhook configurations (config/components/webhook/manifests.yaml) as the local
    control plane registers them: each webhook's `clientConfig.service` becomes the URL
    https://127.0.0.1:<port><path> with our CA as caBundle; names get upstream's `kueue-` prefix; the
    Pod/Deployment/StatefulSet webhooks keep upstream's namespaceSelector; failurePolicy and rules stay
    as upstream wrote them."""
    result = []
    for document in documents:
        if not document:
            continue
        doc = copy.deepcopy(dict(document))
        doc["metadata"] = {**doc.get("metadata", {}), "name": f"kueue-{doc['metadata']['name']}"}
        for hook in doc.get("webhooks") or []:
            path = hook["clientConfig"]["service"].get("path", "")
            hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}{path}", "caBundle": _ca_bundle(ca_pem)}
            if hook["name"] in _NAMESPACE_SCOPED_WEBHOOKS:
                hook["namespaceSelector"] = {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": ["kube-system", KUEUE_NAMESPACE],
                        }
                    ]
                }
        result.append(doc)
    return result


def conversion_patch(port: int, ca_pem: bytes) -> dict[str, Any]:
    """The merge patch that gives a CRD of CONVERSION_CRDS upstream's conversion webhook, pointed at
    the loopback manager (a patch: the Workload CRD is 1.4 MB of YAML, not worth parsing to edit)."""
    return {
        "spec": {
            "conversion": {
                "strategy": "Webhook",
                "webhook": {
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{port}/convert",
                        "caBundle": _ca_bundle(ca_pem),
                    },
                    "conversionReviewVersions": ["v1"],
                },
            }
        }
    }


# -- queueing objects --------------------------------------------------------------------------


def resource_flavor(
    name: str, gpu_product: str | None = None, *, tolerate_kwok: bool = True
) -> dict[str, Any]:
    """A ResourceFlavor for the nodes of one GPU product (`nvidia.com/gpu.product`): Kueue injects its
    nodeLabels as a nodeSelector into the pods of a workload it admits on this flavor, and its
    tolerations (here the simulated kwok nodes' taint) as tolerations."""
    spec: dict[str, Any] = {}
    if gpu_product:
        spec["nodeLabels"] = {GPU_PRODUCT_LABEL: gpu_product}
    if tolerate_kwok:
        spec["tolerations"] = [dict(KWOK_TOLERATION)]
    return {"apiVersion": API_VERSION, "kind": "ResourceFlavor", "metadata": {"name": name}, "spec": spec}


@dataclass(frozen=True)
class FlavorQuota:
    """Nominal quota of one flavor in a ClusterQueue (None: the resource is not covered)."""

    flavor: str
    cpu: str = "0"
    memory: str = "0"
    gpus: int = 0
    gpu_borrowing_limit: int | None = None


def cluster_queue(
    name: str,
    flavors: Sequence[FlavorQuota],
    *,
    cohort: str | None = None,
    within_cluster_queue: str = "LowerPriority",
    reclaim_within_cohort: str = "Never",
    queueing_strategy: str = "BestEffortFIFO",
) -> dict[str, Any]:
    """A ClusterQueue with one resource group covering cpu, memory and nvidia.com/gpu over `flavors`
    (tried in order), open to every namespace (`namespaceSelector: {}`; nil would match none), with
    the given preemption policies (Never, LowerPriority, LowerOrNewerEqualPriority, Any)."""
    flavor_quotas = []
    for quota in flavors:
        gpu: dict[str, Any] = {"name": GPU, "nominalQuota": str(quota.gpus)}
        if quota.gpu_borrowing_limit is not None:
            gpu["borrowingLimit"] = str(quota.gpu_borrowing_limit)
        flavor_quotas.append(
            {
                "name": quota.flavor,
                "resources": [
                    {"name": "cpu", "nominalQuota": quota.cpu},
                    {"name": "memory", "nominalQuota": quota.memory},
                    gpu,
                ],
            }
        )
    spec: dict[str, Any] = {
        "namespaceSelector": {},
        "queueingStrategy": queueing_strategy,
        "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": flavor_quotas}],
        "preemption": {
            "withinClusterQueue": within_cluster_queue,
            "reclaimWithinCohort": reclaim_within_cohort,
        },
    }
    if cohort:
        spec["cohortName"] = cohort
    return {"apiVersion": API_VERSION, "kind": "ClusterQueue", "metadata": {"name": name}, "spec": spec}


def local_queue(namespace: str, name: str, cluster_queue_name: str) -> dict[str, Any]:
    """A LocalQueue: what a Job's `kueue.x-k8s.io/queue-name` label names, in the Job's namespace."""
    return {
        "apiVersion": API_VERSION,
        "kind": "LocalQueue",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"clusterQueue": cluster_queue_name},
    }


def workload_priority_class(name: str, value: int, description: str = "") -> dict[str, Any]:
    """A WorkloadPriorityClass: a Job's `kueue.x-k8s.io/priority-class` label names it; higher values
    are admitted first and may preempt lower ones (as the ClusterQueue's preemption allows)."""
    document: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "WorkloadPriorityClass",
        "metadata": {"name": name},
        "value": value,
    }
    if description:
        document["description"] = description
    return document


def queue_labels(queue: str, priority_class: str | None = None) -> dict[str, str]:
    """The labels that put a Job in LocalQueue `queue` (and give it a WorkloadPriorityClass)."""
    labels = {QUEUE_NAME_LABEL: queue}
    if priority_class:
        labels[PRIORITY_CLASS_LABEL] = priority_class
    return labels
