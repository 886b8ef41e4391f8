"""The chart's rendered manifests, as the real apiserver judges them.

Each scope (cluster-wide, a list of namespaces) is rendered with `helm template` and sent with
`kubectl apply --server-side --dry-run=server --validate=strict`: admission, defaulting, schema and
strict field validation run, nothing is stored. The ServiceMonitor, PodMonitor and PrometheusRule
are judged by the Prometheus Operator's own CRDs (monitoring.coreos.com, the files of its release
that hack/build-tools.sh extracts), installed on the test apiserver for these tests; their content
(queries, rules) is checked by tests/unit/test_chart.py (`promtool check rules`, `promtool test rules`).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from tests.helmchart import CHART, MONITORING_KINDS, RELEASE, by_kind, helm, monitoring_crds, render, set_args

EVERYTHING = {
    "metrics.serviceMonitor.enabled": True,
    "metrics.servingPodMonitor.enabled": True,
    "metrics.prometheusRule.enabled": True,
    "networkPolicy.enabled": True,
}


@pytest.fixture(scope="module", autouse=True)
def _monitoring_crds(control_plane: ControlPlane) -> None:
    control_plane.install_crds(monitoring_crds())


def _dry_run(control_plane: ControlPlane, manifests: list[dict[str, Any]]) -> list[str]:
    result = control_plane.kubectl(
        "apply",
        "--server-side",
        "--dry-run=server",
        "--validate=strict",
        "--field-manager=mlops-chart-test",
        "-f",
        "-",
        input_text=yaml.safe_dump_all(manifests),
        check=False,
    )
    assert result.returncode == 0, f"the apiserver refused the chart:\n{result.stderr}"
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    assert len(lines) == len(manifests), result.stdout
    assert all("(server dry run)" in line for line in lines), result.stdout
    return lines


@pytest.fixture
def other_namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def test_cluster_wide_install_passes_strict_server_side_dry_run(
    control_plane: ControlPlane, namespace: str
) -> None:
    manifests = render(EVERYTHING, namespace=namespace)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "ServiceAccount", "Service", "ClusterKopfPeering", "ConfigMap"} <= kinds
    assert kinds >= MONITORING_KINDS
    lines = _dry_run(control_plane, manifests)
    assert any(line.startswith("podmonitor.monitoring.coreos.com/") for line in lines)
    assert any(line.startswith("deployment.apps/") for line in lines)
    assert any(line.startswith("clusterkopfpeering.kopf.dev/") for line in lines)


def test_namespaced_install_passes_strict_server_side_dry_run(
    control_plane: ControlPlane, namespace: str, other_namespace: str
) -> None:
    values = {**EVERYTHING, "watch.namespaces": [namespace, other_namespace]}
    manifests = render(values, namespace=namespace)
    assert not by_kind(manifests, "ClusterKopfPeering")
    peerings = by_kind(manifests, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == sorted([namespace, other_namespace])
    lines = _dry_run(control_plane, manifests)
    assert sum(line.startswith("kopfpeering.kopf.dev/") for line in lines) == 2


def test_helm_install_dry_run_renders_the_notes(control_plane: ControlPlane, namespace: str) -> None:
    """`helm install --dry-run=server` against the apiserver: the install path, NOTES.txt included."""
    result = helm(
        "install",
        RELEASE,
        CHART,
        "--dry-run=server",
        "--namespace",
        namespace,
        "--kubeconfig",
        str(control_plane.kubeconfig),
        *set_args({"watch.namespaces": [namespace]}),
    )
    notes = result.stdout.split("NOTES:", 1)[1]
    assert f"the namespaces {namespace}" in notes
    assert "kubectl apply --server-side -f charts/mlops-operator/crds/" in notes
