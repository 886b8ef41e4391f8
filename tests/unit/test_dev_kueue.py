"""The Kueue documents the dev control plane and the tests build (mlops_operator.dev.kueue)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator.dev import kueue
from mlops_operator.dev.controlplane import default_bin_dir

# The shape of upstream's config/components/webhook/manifests.yaml (kubebuilder output), trimmed.
UPSTREAM_WEBHOOKS = """
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: mutating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate-batch-v1-job}
  failurePolicy: Fail
  name: mjob.kb.io
  rules:
  - {apiGroups: [batch], apiVersions: [v1], operations: [CREATE], resources: [jobs]}
  sideEffects: None
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /mutate--v1-pod}
  failurePolicy: Fail
  name: mpod.kb.io
  rules:
  - {apiGroups: [""], apiVersions: [v1], operations: [CREATE], resources: [pods]}
  sideEffects: None
---
apiVersion: admissionregistration.k8s.io/v1
kind: ValidatingWebhookConfiguration
metadata:
  name: validating-webhook-configuration
webhooks:
- admissionReviewVersions: [v1]
  clientConfig:
    service: {name: webhook-service, namespace: system, path: /validate-batch-v1-job}
  failurePolicy: Ignore
  name: vjob.kb.io
  rules:
  - {apiGroups: [batch], apiVersions: [v1], operations: [CREATE, UPDATE], resources: [jobs]}
  sideEffects: None
"""
CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_webhooks_point_at_the_loopback_port_with_our_ca_and_keep_upstreams_policy() -> None:
    docs = kueue.loopback_webhooks(list(yaml.safe_load_all(UPSTREAM_WEBHOOKS)), 34567, CA)
    assert [d["metadata"]["name"] for d in docs] == [
        kueue.MUTATING_WEBHOOK_CONFIGURATION,
        kueue.VALIDATING_WEBHOOK_CONFIGURATION,
    ]
    hooks = {h["name"]: h for d in docs for h in d["webhooks"]}
    assert hooks["mjob.kb.io"]["clientConfig"] == {
        "url": "https://127.0.0.1:34567/mutate-batch-v1-job",
        "caBundle": base64.b64encode(CA).decode(),
    }
    assert hooks["vjob.kb.io"]["clientConfig"]["url"] == "https://127.0.0.1:34567/validate-batch-v1-job"
    assert hooks["mjob.kb.io"]["failurePolicy"] == "Fail"
    assert hooks["vjob.kb.io"]["failurePolicy"] == "Ignore"
    assert "namespaceSelector" not in hooks["mjob.kb.io"]
    # Upstream's kustomize patch: the Pod webhook stays off kube-system and kueue-system.
    expression = hooks["mpod.kb.io"]["namespaceSelector"]["matchExpressions"][0]
    assert expression["operator"] == "NotIn"
    assert set(expression["values"]) == {"kube-system", "kueue-system"}


def test_the_source_documents_are_not_modified() -> None:
    source = list(yaml.safe_load_all(UPSTREAM_WEBHOOKS))
    kueue.loopback_webhooks(source, 1, CA)
    assert source[0]["webhooks"][0]["clientConfig"]["service"]["name"] == "webhook-service"
    assert source[0]["metadata"]["name"] == "mutating-webhook-configuration"


def test_manager_config_turns_off_what_a_loopback_control_plane_cannot_have() -> None:
    serving = kueue.KueueServing(webhook_port=1001, health_port=1002, metrics_port=1003, cert_dir="/c")
    config = kueue.manager_config(serving)
    assert config["apiVersion"] == "config.kueue.x-k8s.io/v1beta2"
    assert config["kind"] == "Configuration"
    assert config["internalCertManagement"] == {"enable": False}
    assert config["webhook"] == {"port": 1001, "host": "127.0.0.1", "certDir": "/c"}
    assert config["health"]["healthProbeBindAddress"] == "127.0.0.1:1002"
    assert config["metrics"]["bindAddress"] == "127.0.0.1:1003"
    assert config["leaderElection"] == {"leaderElect": False}
    assert config["manageJobsWithoutQueueName"] is False
    assert config["integrations"]["frameworks"] == ["batch/job"]
    assert config["featureGates"]["VisibilityOnDemand"] is False
    assert "waitForPodsReady" not in config


def test_conversion_patch_targets_convert_on_the_manager() -> None:
    patch = kueue.conversion_patch(4444, CA)
    webhook = patch["spec"]["conversion"]["webhook"]
    assert patch["spec"]["conversion"]["strategy"] == "Webhook"
    assert webhook["clientConfig"]["url"] == "https://127.0.0.1:4444/convert"
    assert base64.b64decode(webhook["clientConfig"]["caBundle"]) == CA


def test_resource_flavor_selects_the_gpu_product_and_tolerates_kwok() -> None:
    flavor = kueue.resource_flavor("h100", "NVIDIA-H100-80GB-HBM3")
    assert flavor["apiVersion"] == "kueue.x-k8s.io/v1beta2"
    assert flavor["kind"] == "ResourceFlavor"
    assert flavor["spec"]["nodeLabels"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert flavor["spec"]["tolerations"][0]["key"] == "kwok.x-k8s.io/node"
    assert kueue.resource_flavor("default", tolerate_kwok=False)["spec"] == {}


def test_cluster_queue_quotas_cohort_and_preemption() -> None:
    queue = kueue.cluster_queue(
        "team-a",
        [kueue.FlavorQuota("h100", cpu="64", memory="512Gi", gpus=8, gpu_borrowing_limit=4),
         kueue.FlavorQuota("a100", cpu="32", memory="256Gi", gpus=4)],
        cohort="perception",
    )  # fmt: skip
    spec = queue["spec"]
    assert spec["cohortName"] == "perception"  # v1beta2 (v1beta1 called it `cohort`)
    assert spec["namespaceSelector"] == {}
    assert spec["preemption"] == {"withinClusterQueue": "LowerPriority", "reclaimWithinCohort": "Never"}
    (group,) = spec["resourceGroups"]
    assert group["coveredResources"] == ["cpu", "memory", "nvidia.com/gpu"]
    assert [f["name"] for f in group["flavors"]] == ["h100", "a100"]
    h100 = {r["name"]: r for r in group["flavors"][0]["resources"]}
    assert h100["nvidia.com/gpu"] == {"name": "nvidia.com/gpu", "nominalQuota": "8", "borrowingLimit": "4"}
    assert h100["memory"]["nominalQuota"] == "512Gi"
    # Every flavor lists the covered resources in the same order, as Kueue's validation requires.
    for flavor in group["flavors"]:
        assert [r["name"] for r in flavor["resources"]] == group["coveredResources"]
    assert "cohortName" not in kueue.cluster_queue("solo", [kueue.FlavorQuota("h100", gpus=8)])["spec"]


def test_local_queue_priority_class_and_labels() -> None:
    assert kueue.local_queue("ns", "team", "team-cq") == {
        "apiVersion": "kueue.x-k8s.io/v1beta2",
        "kind": "LocalQueue",
        "metadata": {"name": "team", "namespace": "ns"},
        "spec": {"clusterQueue": "team-cq"},
    }
    high = kueue.workload_priority_class("high", 1000)
    assert high["value"] == 1000
    assert "spec" not in high
    assert kueue.queue_labels("team", "high") == {
        "kueue.x-k8s.io/queue-name": "team",
        "kueue.x-k8s.io/priority-class": "high",
    }


def _schema_paths(schema: dict[str, Any], document: Any, path: str = "") -> list[str]:
    """Keys of `document` that `schema` (a CRD's openAPIV3Schema) does not define."""
    unknown: list[str] = []
    if isinstance(document, dict):
        properties = schema.get("properties")
        if properties is None:
            return unknown  # free-form (additionalProperties / preserve-unknown-fields)
        for key, value in document.items():
            if key not in properties:
                unknown.append(f"{path}.{key}")
            else:
                unknown += _schema_paths(properties[key], value, f"{path}.{key}")
    elif isinstance(document, list) and "items" in schema:
        for index, item in enumerate(document):
            unknown += _schema_paths(schema["items"], item, f"{path}[{index}]")
    return unknown


@pytest.mark.parametrize(
    ("crd", "document"),
    [
        ("resourceflavors", kueue.resource_flavor("h100", "NVIDIA-H100-80GB-HBM3")),
        ("clusterqueues", kueue.cluster_queue("cq", [kueue.FlavorQuota("h100", gpus=8)], cohort="c")),
        ("localqueues", kueue.local_queue("ns", "lq", "cq")),
        ("workloadpriorityclasses", kueue.workload_priority_class("high", 1000, "urgent")),
    ],
)
def test_builders_use_only_fields_of_kueues_stored_version(crd: str, document: dict[str, Any]) -> None:
    """Against the CRDs hack/build-tools.sh extracted from the Kueue module (skipped if not built)."""
    path = default_bin_dir() / "kueue-crds" / f"kueue.x-k8s.io_{crd}.yaml"
    if not path.exists():
        pytest.skip(f"{path} not built (hack/build-tools.sh)")
    definition = yaml.safe_load(Path(path).read_text())
    (stored,) = [v for v in definition["spec"]["versions"] if v["storage"]]
    assert f"{definition['spec']['group']}/{stored['name']}" == document["apiVersion"]
    assert _schema_paths(stored["schema"]["openAPIV3Schema"], document) == []
