"""The operator's identity in the integration tests: the Helm chart's own ServiceAccount and RBAC.

The chart's `templates/serviceaccount.yaml` and `templates/rbac.yaml` are rendered with `helm
template`, applied to the session's control plane, and the operator runs with a TokenRequest token
of that ServiceAccount, never as `system:masters`. Each test's operator serves one namespace, so the
tests use the chart's namespaced scope: the chart's Role and RoleBinding are applied in each
namespace an operator is started in, the cluster-scoped part (kopf's CRD and namespace reads) once.
"""

from __future__ import annotations

import copy
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlops_operator.dev.controlplane import (
    OPERATOR_NAMESPACE,
    OPERATOR_SA_USER,
    OPERATOR_SERVICE_ACCOUNT,
    ControlPlane,
    default_bin_dir,
)
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mlops-operator"
RELEASE = "mlops-operator"  # the chart's documented release name, for rendering checks
# The suite's own release: object names of its own, so the chart's install/dry-run tests (release
# `mlops-operator`) never meet these; its ServiceAccount keeps the name OPERATOR_SA_USER gives.
SUITE_RELEASE = "mlops-suite"
# Rendered once with this namespace in watch.namespaces; its namespaced objects are re-targeted at
# each test's namespace.
PLACEHOLDER_NAMESPACE = "mlops-rbac-template"
# The KopfPeering test_peering creates; the chart lets the operator patch only its own peering object.
TEST_PEERING_NAME = "mlops"


def helm() -> Path:
    return default_bin_dir() / "helm"


def render(
    values: dict[str, Any],
    templates: tuple[str, ...] = ("templates/rbac.yaml",),
    *,
    release: str = RELEASE,
    namespace: str = OPERATOR_NAMESPACE,
) -> list[dict[str, Any]]:
    """`helm template` of some of the chart's templates, as objects."""
    shown = [arg for t in templates for arg in ("--show-only", t)]
    result = subprocess.run(
        [str(helm()), "template", release, str(CHART), "--namespace", namespace, "--values", "-", *shown],
        input=yaml.safe_dump(values),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        raise AssertionError(f"helm template failed: {result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def can_i(
    control_plane: ControlPlane,
    verb: str,
    resource: str,
    namespace: str | None = None,
    subresource: str = "",
    *,
    as_user: str = OPERATOR_SA_USER,
) -> bool:
    """Whether the operator's ServiceAccount may do this (a SubjectAccessReview through kubectl)."""
    args = ["auth", "can-i", verb, resource, f"--as={as_user}"]
    args += ["-n", namespace] if namespace else []
    args += [f"--subresource={subresource}"] if subresource else []
    return control_plane.kubectl(*args, check=False).stdout.strip() == "yes"


@dataclass
class OperatorIdentity:
    """The chart's ServiceAccount on one control plane, and the namespaces its Role is applied in."""

    control_plane: ControlPlane
    kubeconfig: Path
    namespaced: list[dict[str, Any]]
    granted: set[str] = field(default_factory=set)

    def grant(self, namespace: str) -> Path:
        """Apply the chart's Role and RoleBinding in `namespace` (once); the kubeconfig to run with."""
        if namespace not in self.granted:
            docs = copy.deepcopy(self.namespaced)
            for doc in docs:
                doc["metadata"]["namespace"] = namespace
            self.control_plane.kubectl_apply(docs)
            # RBAC is enforced from the apiserver's informer cache: wait until the binding is in it,
            # or the operator's first list could be refused.
            wait_for(
                lambda: can_i(self.control_plane, "get", "secrets", namespace),
                f"the chart's RoleBinding in {namespace} to take effect",
                30,
            )
            self.granted.add(namespace)
        return self.kubeconfig


_IDENTITIES: dict[tuple[int, str], OperatorIdentity] = {}


def chart_values() -> dict[str, Any]:
    """The values the tests install the chart's RBAC with (namespaced scope)."""
    return {
        "watch": {"namespaces": [PLACEHOLDER_NAMESPACE]},
        "peering": {"name": TEST_PEERING_NAME},
        "serviceAccount": {"name": OPERATOR_SERVICE_ACCOUNT},
    }


# A second release, cluster-wide (ClusterRole, ClusterKopfPeering), under its own ServiceAccount:
# test_rbac runs one operator with it.
CLUSTER_WIDE_RELEASE = "mlops-cw"
CLUSTER_WIDE_SERVICE_ACCOUNT = f"{CLUSTER_WIDE_RELEASE}-mlops-operator"
CLUSTER_WIDE_SA_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{CLUSTER_WIDE_SERVICE_ACCOUNT}"
# The identities whose requests the suite's control plane audits, reads included, and whose refused
# requests fail a test.
OPERATOR_USERS = (OPERATOR_SA_USER, CLUSTER_WIDE_SA_USER)


def operator_identity(control_plane: ControlPlane, *, cluster_wide: bool = False) -> OperatorIdentity:
    """The chart's ServiceAccount and cluster-scoped RBAC on this control plane (set up once).

    Namespaced (default): release `mlops-operator`, the suite's operators (grant() each namespace).
    Cluster-wide: release `mlops-cw`, its ClusterRole and its ClusterKopfPeering."""
    key = (id(control_plane), "cluster" if cluster_wide else "namespaced")
    known = _IDENTITIES.get(key)
    if known is not None and known.control_plane is control_plane:
        return known
    if cluster_wide:
        release, account, user = CLUSTER_WIDE_RELEASE, CLUSTER_WIDE_SERVICE_ACCOUNT, CLUSTER_WIDE_SA_USER
        values: dict[str, Any] = {}
        templates: tuple[str, ...] = (
            "templates/serviceaccount.yaml",
            "templates/rbac.yaml",
            "templates/peering.yaml",
        )
    else:
        release, account, user = SUITE_RELEASE, OPERATOR_SERVICE_ACCOUNT, OPERATOR_SA_USER
        values, templates = chart_values(), ("templates/serviceaccount.yaml", "templates/rbac.yaml")
    docs = render(values, templates, release=release)
    accounts = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert [(a["metadata"]["namespace"], a["metadata"]["name"]) for a in accounts] == [
        (OPERATOR_NAMESPACE, account)
    ], f"the chart's ServiceAccount is the one {user} names"
    namespaced = [d for d in docs if d["metadata"].get("namespace") == PLACEHOLDER_NAMESPACE]
    others = [d for d in docs if d["metadata"].get("namespace") != PLACEHOLDER_NAMESPACE]
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}}
    control_plane.kubectl_apply([namespace, *others])
    wait_for(
        lambda: can_i(control_plane, "list", "customresourcedefinitions.apiextensions.k8s.io", as_user=user),
        "the chart's ClusterRoleBinding to take effect",
        30,
    )
    kubeconfig = control_plane.service_account_kubeconfig(OPERATOR_NAMESPACE, account)
    identity = OperatorIdentity(control_plane, kubeconfig, namespaced)
    _IDENTITIES[key] = identity
    return identity
