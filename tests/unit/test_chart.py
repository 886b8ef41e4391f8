"""charts/mlops-operator: lint, what it renders for each scope, its schema, CRDs, alerts and dashboard.

No cluster here: helm renders, promtool checks. tests/integration/test_chart_on_apiserver.py sends
the same manifests to the real apiserver (server-side dry-run, strict field validation).
"""

from __future__ import annotations

import filecmp
import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator.api.v1alpha1 import DatasetSpec, InferenceDeploymentSpec
from mlops_operator.builders.serving import (
    ServingInputs,
    build_analysis_template,
    build_rollout,
    canary_labels,
)
from mlops_operator.settings import OperatorConfig
from tests.helmchart import (
    CHART,
    JOB,
    PROMTOOL_TESTS,
    ROOT,
    alert_groups,
    by_kind,
    dashboard,
    dashboard_exprs,
    helm,
    one,
    promtool,
    render,
    template,
    tool,
    write_yaml,
)

NAMESPACED = {"watch.namespaces": ["team-a", "team-b"]}
EVERYTHING = {
    "metrics.serviceMonitor.enabled": True,
    "metrics.servingPodMonitor.enabled": True,
    "metrics.prometheusRule.enabled": True,
    "networkPolicy.enabled": True,
}
ALERTS = {
    "MlopsOperatorDown",
    "MlopsOperatorReplicaDown",
    "MlopsTrainingRunsStuck",
    "MlopsInferenceDeploymentsDegraded",
    "MlopsDriftDetected",
    "MlopsTrainingFailureRateHigh",
    "MlopsReconcileErrorsHigh",
    "MlopsReconcileUnexpectedErrors",
}


def _container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    deployment = one(manifests, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container  # type: ignore[no-any-return]


def _env(manifests: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in _container(manifests)["env"] if "value" in e}


# -- lint ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [{}, NAMESPACED, EVERYTHING], ids=["default", "namespaced", "everything"])
def test_helm_lint_is_clean(values: dict[str, Any]) -> None:
    args = [a for key, value in values.items() for a in ("--set-json", f"{key}={json.dumps(value)}")]
    result = helm("lint", CHART, "--strict", *args)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


# -- the Deployment --------------------------------------------------------------------------------


def test_default_install_is_two_peered_replicas_watching_the_cluster() -> None:
    manifests = render()
    deployment = one(manifests, "Deployment")
    env = _env(manifests)
    assert deployment["spec"]["replicas"] == 2
    peering = one(manifests, "ClusterKopfPeering")
    assert not by_kind(manifests, "KopfPeering")
    assert env["MLOPS_PEERING_NAME"] == peering["metadata"]["name"]
    assert json.loads(env["MLOPS_NAMESPACES"]) == []
    assert env["MLOPS_LOG_FORMAT"] == "json"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert _container(manifests)["image"] == f"ghcr.io/mlops-operator/operator:{chart['appVersion']}"
    pdb = one(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]


def test_namespaced_install_has_a_peering_object_in_each_namespace() -> None:
    manifests = render(NAMESPACED)
    assert not by_kind(manifests, "ClusterKopfPeering")
    peerings = by_kind(manifests, "KopfPeering")
    assert sorted(p["metadata"]["namespace"] for p in peerings) == ["team-a", "team-b"]
    env = _env(manifests)
    assert json.loads(env["MLOPS_NAMESPACES"]) == ["team-a", "team-b"]
    assert {p["metadata"]["name"] for p in peerings} == {env["MLOPS_PEERING_NAME"]}


def test_every_env_var_is_an_operator_setting_and_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's MLOPS_* variables are the ones settings.py reads, with values it accepts."""
    values = {
        **NAMESPACED,
        "operator.workloadTolerations": [{"key": "gpu", "operator": "Exists"}],
        "operator.s3EndpointAllowlist": ["minio.data.svc:9000"],
        "operator.shmSizeLimit": "2Gi",
        "operator.prometheusAddress": "http://prometheus-operated.monitoring.svc:9090",
        "operator.prometheusEndpointAllowlist": ["prometheus.team-a.svc:9090"],
    }
    env = {k: v for k, v in _env(render(values)).items() if k.startswith("MLOPS_")}
    fields = {f"MLOPS_{name.upper()}" for name in OperatorConfig.model_fields}
    assert set(env) <= fields, f"env vars the operator does not read: {set(env) - fields}"
    for name in fields:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = OperatorConfig()
    assert config.namespaces == ["team-a", "team-b"]
    assert config.peering_name == env["MLOPS_PEERING_NAME"]
    assert (config.health_port, config.metrics_port) == (8080, 8000)
    assert config.workers == OperatorConfig.model_fields["workers"].default
    assert config.start_deadline_seconds == 600
    assert config.log_format == "json"
    assert config.workload_tolerations == [{"key": "gpu", "operator": "Exists"}]
    assert config.s3_endpoint_allowlist == ["minio.data.svc:9000"]
    assert config.manifest_max_bytes == OperatorConfig.model_fields["manifest_max_bytes"].default
    assert (config.scratch_size_limit, config.shm_size_limit) == ("20Gi", "2Gi")
    assert config.prometheus_address == "http://prometheus-operated.monitoring.svc:9090"
    assert config.prometheus_endpoint_allowlist == ["prometheus.team-a.svc:9090"]


def test_without_a_prometheus_address_the_operator_gets_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default install names no Prometheus: the operator must see none (not `""`, which would go
    into every AnalysisTemplate as `address: ""` and abort every canary) and run canaries unmeasured."""
    env = _env(render())
    assert "MLOPS_PROMETHEUS_ADDRESS" not in env
    assert env["MLOPS_PROMETHEUS_ENDPOINT_ALLOWLIST"] == "[]"
    monkeypatch.setenv("MLOPS_PROMETHEUS_ADDRESS", "")  # an empty value set by hand (extraEnv)
    assert OperatorConfig().prometheus_address is None


def test_pod_meets_the_restricted_pod_security_standard() -> None:
    spec = one(render(), "Deployment")["spec"]["template"]["spec"]
    pod = spec["securityContext"]
    (container,) = spec["containers"]
    sc = container["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork")
    assert not spec.get("hostPID")
    for volume in spec["volumes"]:
        assert set(volume) <= {"name", "emptyDir", "configMap", "secret", "projected"}
        if "emptyDir" in volume:
            assert volume["emptyDir"]["sizeLimit"]


def test_probes_ports_and_resources_match_the_operator_settings() -> None:
    manifests = render({"operator.healthPort": 9090, "metrics.port": 9100})
    container = _container(manifests)
    env = _env(manifests)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": 9090, "metrics": 9100}
    assert (env["MLOPS_HEALTH_PORT"], env["MLOPS_METRICS_PORT"]) == ("9090", "9100")
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert {"cpu", "memory"} <= set(container["resources"]["limits"])
    service = one(manifests, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"
    assert service["spec"]["selector"] == one(manifests, "Deployment")["spec"]["selector"]["matchLabels"]


def test_pod_runs_as_the_charts_service_account() -> None:
    manifests = render()
    account = one(manifests, "ServiceAccount")
    spec = one(manifests, "Deployment")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == account["metadata"]["name"]
    existing = render({"serviceAccount.create": False, "serviceAccount.name": "ops"})
    assert not by_kind(existing, "ServiceAccount")
    assert one(existing, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "ops"


def test_image_digest_and_tag_overrides() -> None:
    digest = "sha256:" + "a" * 64
    assert _container(render({"image.tag": "1.2.3"}))["image"].endswith(":1.2.3")
    assert (
        _container(render({"image.digest": digest}))["image"] == f"ghcr.io/mlops-operator/operator@{digest}"
    )


def test_every_object_carries_the_common_labels() -> None:
    for manifest in render({**EVERYTHING, **NAMESPACED}):
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "mlops-operator", manifest["kind"]
        assert labels["app.kubernetes.io/managed-by"] == "Helm", manifest["kind"]


def test_network_policy_allows_scrapes_probes_dns_and_the_apiserver() -> None:
    manifests = render({"networkPolicy.enabled": True, "networkPolicy.apiServerCIDRs": ["10.0.0.1/32"]})
    policy = one(manifests, "NetworkPolicy")["spec"]
    named = {p["name"] for p in _container(manifests)["ports"]}
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == named
    egress_ports = {p["port"] for rule in policy["egress"] for p in rule["ports"]}
    assert {53, 443, 6443} <= egress_ports
    assert {"ipBlock": {"cidr": "10.0.0.1/32"}} in policy["egress"][1]["to"]
    assert not by_kind(render(), "NetworkPolicy")


# -- CRDs ------------------------------------------------------------------------------------------


def test_chart_crds_are_the_generated_crds_byte_for_byte() -> None:
    repo = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))
    chart = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert chart == repo, "charts/mlops-operator/crds/ differs from crds/: run `make crds`"
    _, mismatch, errors = filecmp.cmpfiles(ROOT / "crds", CHART / "crds", repo, shallow=False)
    assert not mismatch, f"stale chart CRDs {mismatch}: run `make crds`"
    assert not errors, f"unreadable chart CRDs {errors}"


# -- values and schema -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"replicaCount": 0}, "/replicaCount"),
        ({"unknownKey": 1}, "additional properties 'unknownKey' not allowed"),
        ({"operator.logFormat": "xml"}, "/operator/logFormat"),
        ({"operator.workers": 500}, "/operator/workers"),
        ({"watch.namespaces": ["Not_A_Namespace"]}, "/watch/namespaces/0"),
        ({"watch.namespaces": "team-a"}, "/watch/namespaces"),
        ({"image.digest": "latest"}, "/image/digest"),
        ({"metrics.prometheusRule.failureRateThreshold": 2}, "/metrics/prometheusRule/failureRateThreshold"),
        ({"operator.prometheusAddress": "prometheus:9090"}, "/operator/prometheusAddress"),
        ({"operator.prometheusAddress": "http://"}, "/operator/prometheusAddress"),
    ],
)
def test_schema_rejects_bad_values(values: dict[str, Any], message: str) -> None:
    result = template(values, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert message in result.stderr, result.stderr


def _leaf_paths(node: Any, prefix: str = "") -> set[str]:
    if isinstance(node, dict) and node:
        return {p for key, sub in node.items() for p in _leaf_paths(sub, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


def _schema_paths(node: dict[str, Any], prefix: str = "") -> set[str]:
    if node.get("additionalProperties") is False:
        return {p for key, sub in node["properties"].items() for p in _schema_paths(sub, f"{prefix}{key}.")}
    return {prefix.rstrip(".")}


def test_every_value_is_in_the_schema_commented_and_in_the_readme() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())
    schema_paths = _schema_paths(schema)
    # Free-form Kubernetes objects (resources, securityContext ...) are one value each.
    documented = {p for p in _leaf_paths(values) if not any(p.startswith(f"{s}.") for s in schema_paths)}
    documented |= {
        s for s in schema_paths if any(p == s or p.startswith(f"{s}.") for p in _leaf_paths(values))
    }
    missing_from_values = schema_paths - documented
    assert not missing_from_values, f"schema keys with no default in values.yaml: {missing_from_values}"

    # Each value (a schema leaf: a setting, or one free-form Kubernetes object) has a comment above it.
    stack: list[tuple[int, str]] = []
    lines = (CHART / "values.yaml").read_text().splitlines()
    commented = set()
    for index, line in enumerate(lines):
        match = re.match(r"^(\s*)([A-Za-z][A-Za-z0-9]*):", line)
        if not match:
            continue
        indent = len(match.group(1))
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, match.group(2))]
        path = ".".join(k for _, k in stack)
        if path in schema_paths and index and lines[index - 1].lstrip().startswith("#"):
            commented.add(path)
    assert schema_paths <= commented, f"values without a comment: {sorted(schema_paths - commented)}"

    readme = (CHART / "README.md").read_text()
    table_keys = set(re.findall(r"^\| `([A-Za-z0-9.]+)` \|", readme, flags=re.MULTILINE))
    undocumented = {p for p in schema_paths if p not in table_keys}
    assert not undocumented, f"values missing from the README's table: {sorted(undocumented)}"


# -- monitoring ------------------------------------------------------------------------------------


def test_monitoring_objects_are_optional_and_point_at_the_metrics_service() -> None:
    assert not by_kind(render(), "ServiceMonitor")
    assert not by_kind(render(), "PrometheusRule")
    manifests = render(EVERYTHING)
    monitor = one(manifests, "ServiceMonitor")["spec"]
    service = one(manifests, "Service")
    assert monitor["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["name"] == JOB  # Prometheus Operator's job label: the Service's name
    rule = one(manifests, "PrometheusRule")
    assert {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]} == ALERTS


def _prometheus_meta_label(pod_label: str) -> str:
    # Prometheus's Kubernetes discovery: every character outside [a-zA-Z0-9_] becomes "_".
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", pod_label)


@pytest.mark.parametrize("values", [{}, NAMESPACED], ids=["cluster", "namespaced"])
def test_serving_pod_monitor_gives_the_serving_pods_the_labels_the_canary_analysis_queries(
    values: dict[str, Any],
) -> None:
    assert not by_kind(render(values), "PodMonitor")
    monitor = one(render({**values, "metrics.servingPodMonitor.enabled": True}), "PodMonitor")["spec"]
    inputs = ServingInputs(
        name="digits",
        namespace="team-a",
        uid="1d2e3f4a-0000-1111-2222-333344445555",
        spec=InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v2"}}),
        model_version="v2",
        model_name="digits",
        repository_uri="s3://data/engines/triton/digits/abcdef0123456789/",
        dataset=DatasetSpec.model_validate(
            {"source": {"uri": "s3://data/digits/", "credentialsSecretRef": {"name": "s3"}}}
        ),
        fetch_image="trainer:1",
        gpu_product=None,
        prometheus_address="http://prometheus:9090",
    )
    template = build_rollout(inputs)["spec"]["template"]
    # Argo Rollouts adds this label to each ReplicaSet's pods.
    pod_labels = {**template["metadata"]["labels"], "rollouts-pod-template-hash": "6d4f8b9c7"}
    assert monitor["selector"]["matchLabels"].items() <= pod_labels.items()
    if values:
        assert monitor["namespaceSelector"] == {"matchNames": values["watch.namespaces"]}
    else:
        assert monitor["namespaceSelector"] == {"any": True}
    (endpoint,) = monitor["podMetricsEndpoints"]
    ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
    assert endpoint["port"] in ports
    # The target labels the relabelings make from a pod are the ones the analysis queries select on.
    meta = {_prometheus_meta_label(k): v for k, v in pod_labels.items()}
    meta["__meta_kubernetes_namespace"] = inputs.namespace
    target = {r["targetLabel"]: meta[r["sourceLabels"][0]] for r in endpoint["relabelings"]}
    wanted = canary_labels(inputs, "6d4f8b9c7")
    assert wanted.items() <= target.items()
    query = build_analysis_template(inputs)["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    for name in wanted:
        assert f'{name}="' in query


def test_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = write_yaml(tmp_path / "rules.yaml", alert_groups())
    result = promtool("check", "rules", rules)
    assert "SUCCESS" in result.stdout, result.stdout + result.stderr


def test_alert_rules_pass_their_promtool_unit_tests(tmp_path: Path) -> None:
    """tests/promtool/alerts_test.yaml: each alert fires on the series that should fire it, not before."""
    tool("promtool")
    write_yaml(tmp_path / "rules.yaml", alert_groups())
    shutil.copy(PROMTOOL_TESTS / "alerts_test.yaml", tmp_path)
    result = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = set(re.findall(r"alertname: (\w+)", (PROMTOOL_TESTS / "alerts_test.yaml").read_text()))
    assert tested == ALERTS, f"alerts without a promtool test: {ALERTS - tested}"


def test_alert_thresholds_come_from_values(tmp_path: Path) -> None:
    values = {"metrics.prometheusRule.stuckMinutes": 45, "metrics.prometheusRule.job": "ops"}
    rules = {r["alert"]: r for g in alert_groups(values)["groups"] for r in g["rules"]}
    assert rules["MlopsTrainingRunsStuck"]["for"] == "45m"
    assert all('job="ops"' in r["expr"] for r in rules.values())
    result = promtool("check", "rules", write_yaml(tmp_path / "rules.yaml", alert_groups(values)))
    assert "SUCCESS" in result.stdout


def test_dashboard_is_a_grafana_configmap_whose_every_query_parses(tmp_path: Path) -> None:
    """Each panel query becomes a recording rule, so `promtool check rules` parses it as PromQL."""
    board = dashboard()
    assert board["uid"] == "mlops-operator"
    assert board["panels"]
    exprs = dashboard_exprs(board)
    assert len(exprs) >= 10
    rules = [{"record": f"dashboard:panel_{i}", "expr": expr} for i, (_, expr) in enumerate(exprs)]
    path = write_yaml(tmp_path / "dashboard_rules.yaml", {"groups": [{"name": "dashboard", "rules": rules}]})
    result = promtool("check", "rules", path, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    config_map = next(m for m in render() if m["kind"] == "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    unknown = _unknown_metrics(e for _, e in exprs)
    assert not unknown, f"dashboard queries metrics the operator does not export: {unknown}"


def _unknown_metrics(exprs: Iterable[str]) -> set[str]:
    """mlops_* names in the queries that metrics.py does not export (histogram series included)."""
    named = set(re.findall(r"\b(mlops_[a-z_]+)", " ".join(exprs)))
    exported = set(
        re.findall(r'"(mlops_[a-z_]+)"', (ROOT / "operator/mlops_operator/metrics.py").read_text())
    )
    exported |= {f"{m}{suffix}" for m in exported for suffix in ("_bucket", "_count", "_sum")}
    return named - exported


def test_alert_rules_query_only_metrics_the_operator_exports() -> None:
    exprs = [r["expr"] for g in alert_groups()["groups"] for r in g["rules"]]
    assert not _unknown_metrics(exprs)
    assert _unknown_metrics(["mlops_nonexistent_total"]) == {"mlops_nonexistent_total"}
