"""The chart's RBAC: nothing but what the code calls (charts/mlops-operator/RBAC.md).

That it is enough is proven by the rest of the suite: every operator there runs under it, and
`no_forbidden_requests` (conftest.py) fails any test in which the apiserver refused it a request.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from mlops_operator.dev.controlplane import (
    OPERATOR_NAMESPACE,
    OPERATOR_SA_USER,
    OPERATOR_SERVICE_ACCOUNT,
    ControlPlane,
)
from mlops_operator.dev.pods import finish_pod
from tests.integration.conftest import _refused_by_rbac, start_operator
from tests.integration.operator_rbac import (
    CLUSTER_WIDE_SA_USER,
    CLUSTER_WIDE_SERVICE_ACCOUNT,
    can_i,
    operator_identity,
    render,
)
from tests.integration.test_trainingrun import SUCCESS, G, V, _get, _run, _running_pods, _wait_phase
from tests.waiting import wait_for

SCOPES = {
    "cluster-wide": {},
    "namespaced": {"watch": {"namespaces": ["team-a", "team-b"]}},
}
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
DANGEROUS_VERBS = {"*", "escalate", "bind", "impersonate", "approve", "sign"}


def _roles(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("ClusterRole", "Role")]


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role.get("rules") or []
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in rule["verbs"]
    }


@pytest.mark.parametrize("watch_secrets", [True, False])
@pytest.mark.parametrize("scope", SCOPES)
def test_no_wildcards_and_secrets_are_get_and_a_metadata_watch_only(scope: str, watch_secrets: bool):
    values = {**SCOPES[scope], "watch": {**SCOPES[scope].get("watch", {}), "secrets": watch_secrets}}
    roles = _roles(render(values))
    assert roles
    secret_verbs: set[str] = set()
    for role in roles:
        for rule in role["rules"]:
            where = f"{role['kind']} {role['metadata']['name']}: {rule}"
            assert "*" not in rule.get("apiGroups", []), where
            assert not any("*" in r for r in rule.get("resources", [])), where
            assert not DANGEROUS_VERBS & set(rule["verbs"]), where
            assert "nonResourceURLs" not in rule, where
            if "secrets" in rule.get("resources", []):
                # get by name; list/watch only for the engine's metadata-only Secret informer
                assert rule["verbs"] in (["get"], ["list", "watch"]), where
                assert rule["resources"] == ["secrets"], where
                assert rule["apiGroups"] == [""], where
                if role["kind"] == "Role" or scope == "cluster-wide":
                    secret_verbs |= set(rule["verbs"])
        grants = _grants(role)
        # The operator never writes the spec of our objects: status only, the finalizers subresource
        # that owner references with blockOwnerDeletion need, a ModelVersion's own finalizer, and a
        # ModelPipeline's runs (it creates each run's TrainingRun and ModelVersion, never updates
        # them, and deletes them when superseded or past the history limits).
        for group, resource, verb in grants:
            if group == "mlops.dev" and verb in WRITE_VERBS:
                assert resource.endswith("/status") or (resource, verb) in {
                    ("trainingruns/finalizers", "update"),
                    ("modelversions/finalizers", "update"),
                    ("inferencedeployments/finalizers", "update"),
                    ("driftmonitors/finalizers", "update"),
                    ("modelpipelines/finalizers", "update"),
                    ("modelversions", "patch"),
                    ("trainingruns", "create"),
                    ("trainingruns", "delete"),
                    ("modelversions", "create"),
                    ("modelversions", "delete"),
                }
        # Pods are only watched: the Job controller makes them.
        assert {v for g, r, v in grants if (g, r) == ("", "pods")} <= {"list", "watch"}
    assert secret_verbs == ({"get", "list", "watch"} if watch_secrets else {"get"})


def test_namespaced_scope_holds_nothing_namespaced_outside_its_namespaces():
    docs = render(SCOPES["namespaced"])
    cluster_roles = [d for d in docs if d["kind"] == "ClusterRole"]
    assert len(cluster_roles) == 1
    assert _grants(cluster_roles[0]) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    roles = [d for d in docs if d["kind"] == "Role"]
    bindings = [d for d in docs if d["kind"] == "RoleBinding"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": OPERATOR_SERVICE_ACCOUNT, "namespace": OPERATOR_NAMESPACE}
        ]
    assert not [
        d
        for d in docs
        if d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] != "mlops-operator-discovery"
    ]


def test_cluster_wide_scope_needs_no_namespace_reads():
    """kopf lists namespaces only when it serves a list of them."""
    grants = set().union(*(_grants(r) for r in _roles(render(SCOPES["cluster-wide"]))))
    assert not {g for g in grants if g[1] == "namespaces"}
    assert ("kopf.dev", "clusterkopfpeerings", "watch") in grants
    assert not [g for g in grants if g[1] == "kopfpeerings"]


def test_peering_object_is_the_only_one_patched():
    for scope, values in SCOPES.items():
        for role in _roles(render(values)):
            for rule in role["rules"]:
                if "kopf.dev" in rule["apiGroups"] and set(rule["verbs"]) & WRITE_VERBS:
                    assert rule["verbs"] == ["patch"], scope
                    assert rule["resourceNames"] == ["mlops-operator"], scope
        assert not [
            r
            for role in _roles(render({**values, "peering": {"enabled": False}}))
            for r in role["rules"]
            if "kopf.dev" in r["apiGroups"]
        ], scope


def test_rbac_create_false_renders_no_rbac():
    docs = render({"rbac": {"create": False}}, ("templates/serviceaccount.yaml",))
    assert [d["kind"] for d in docs] == ["ServiceAccount"]


def test_the_operator_identity_holds_what_the_role_says(control_plane: ControlPlane, namespace: str):
    """The identity the suite runs the operator as, asked of the apiserver's own authorizer."""
    operator_identity(control_plane).grant(namespace)
    allowed = [
        ("get", "secrets"),
        ("list", "secrets"),  # watch.secrets: the engine's metadata-only informer
        ("watch", "secrets"),
        ("list", "services"),  # every child kind is watched, so a deleted one is put back
        ("list", "horizontalpodautoscalers.autoscaling"),
        ("list", "jobs.batch"),
        ("create", "jobs.batch"),
        ("patch", "services"),
        ("create", "events"),
        ("list", "trainingruns.mlops.dev"),
        ("get", "datasets.mlops.dev"),
        ("get", "trainingruns.mlops.dev"),
        ("patch", "modelversions.mlops.dev"),
        ("list", "pods"),
        ("patch", "horizontalpodautoscalers.autoscaling"),
        ("delete", "horizontalpodautoscalers.autoscaling"),
        ("delete", "deployments.apps"),
        # A ModelPipeline's runs: created, and deleted when superseded or past the history limits.
        ("create", "trainingruns.mlops.dev"),
        ("delete", "trainingruns.mlops.dev"),
        ("create", "modelversions.mlops.dev"),
    ]
    denied = [
        ("get", "horizontalpodautoscalers.autoscaling"),  # the informer's cache serves reads
        ("update", "deployments.apps"),
        ("create", "secrets"),
        ("update", "secrets"),
        ("create", "pods"),
        ("delete", "pods"),
        ("get", "configmaps"),
        ("patch", "trainingruns.mlops.dev"),
        ("update", "datasets.mlops.dev"),
        ("update", "trainingruns.mlops.dev"),
        ("delete", "datasets.mlops.dev"),
        ("create", "rolebindings.rbac.authorization.k8s.io"),
        ("create", "serviceaccounts/token"),
    ]
    assert [a for a in allowed if not can_i(control_plane, *a, namespace)] == []
    assert [d for d in denied if can_i(control_plane, *d, namespace)] == []
    # Status only, and in the served namespace only.
    assert can_i(control_plane, "patch", "trainingruns.mlops.dev", namespace, subresource="status")
    assert not can_i(control_plane, "get", "secrets", "kube-system")
    assert not can_i(control_plane, "list", "jobs.batch", "default")
    assert not can_i(control_plane, "list", "pods")  # all namespaces
    assert not can_i(control_plane, "get", "nodes")


def test_cluster_wide_operator_runs_under_the_cluster_wide_role(
    control_plane: ControlPlane,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    dataset: str,
    namespace: str,
    tmp_path: Path,
):
    """The default install: one operator serving the whole cluster, with the chart's ClusterRole and
    its ClusterKopfPeering. A distributed run exercises every rule (Dataset Secret, status, events,
    Job and Service apply, pods, the TTL's deletes); no_forbidden_requests fails on any 403."""
    identity = operator_identity(control_plane, cluster_wide=True)
    peering = {
        "MLOPS_NAMESPACES": "[]",
        "MLOPS_PEERING_NAME": CLUSTER_WIDE_SERVICE_ACCOUNT,  # the chart's peering object (fullname)
        "MLOPS_PEERING_LIFETIME_SECONDS": "10",
    }
    running = start_operator(
        control_plane, namespace, tmp_path / "operator.log", peering, kubeconfig=identity.kubeconfig
    )
    try:
        run = _run("cw", dataset, distributed={"nodes": 2, "procsPerNode": 1}, ttlSecondsAfterFinished=1)
        custom.create_namespaced_custom_object(G, V, namespace, "trainingruns", run)
        _wait_phase(custom, namespace, "cw", "Running")
        for pod in _running_pods(core, namespace, "cw-a1", count=2):
            finish_pod(core, namespace, pod, exit_code=0, message=SUCCESS)
        _wait_phase(custom, namespace, "cw", "Succeeded")
        wait_for(
            lambda: any(
                c["type"] == "ChildrenDeleted" for c in _get(custom, namespace, "cw")["status"]["conditions"]
            ),
            "the TTL to delete the run's Job and Service",
            30,
        )
        assert not core.list_namespaced_service(namespace, label_selector="mlops.dev/trainingrun=cw").items
    finally:
        running.stop()
    requests = {
        (e["verb"], (e.get("objectRef") or {}).get("resource"))
        for e in control_plane.writes_by(CLUSTER_WIDE_SA_USER)
    }
    assert ("patch", "clusterkopfpeerings") in requests, "the operator ran as the cluster-wide identity"


@pytest.mark.forbidden_expected
def test_a_refused_request_of_the_operator_is_seen(control_plane: ControlPlane, namespace: str):
    """What no_forbidden_requests relies on: the audit log records the operator identity's refused
    reads and writes with their 403."""
    kubeconfig = operator_identity(control_plane).grant(namespace)
    offset = control_plane.audit_log.stat().st_size
    for args in (("get", "configmaps"), ("create", "configmap", "probe", "--from-literal=a=b")):
        result = control_plane.kubectl(*args, "-n", namespace, f"--kubeconfig={kubeconfig}", check=False)
        assert "forbidden" in result.stderr.lower()
    entries = control_plane.denied_requests(OPERATOR_SA_USER, offset)
    assert {(e["verb"], e["objectRef"]["resource"]) for e in entries} == {
        ("list", "configmaps"),
        ("create", "configmaps"),
    }
    assert all(_refused_by_rbac(e) for e in entries)
