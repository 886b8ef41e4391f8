"""charts/mlops-operator, rendered and checked with the real tools: helm and promtool.

Both are built from their Go modules by hack/build-tools.sh and found where the control plane finds
its binaries (`$MLOPS_BIN_DIR`, else the cache's bin/current). Shared by tests/unit/test_chart.py
(lint, rendering, schema, alert rules) and tests/integration/test_chart_on_apiserver.py (the rendered
manifests dry-run on the real apiserver).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlops_operator.dev.controlplane import default_bin_dir

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "mlops-operator"
PROMTOOL_TESTS = ROOT / "tests" / "promtool"
RELEASE = "mlops-operator"
# The Prometheus job of the metrics Service for RELEASE (what the alert rules select on).
JOB = f"{RELEASE}-metrics"
# The chart's optional Prometheus Operator objects; hack/build-tools.sh extracts their CRDs.
MONITORING_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule"}

Manifest = dict[str, Any]


def tool(name: str) -> Path:
    """A binary built by hack/build-tools.sh; the test is skipped, saying how to build it, if absent."""
    path = default_bin_dir() / name
    if not os.access(path, os.X_OK):
        pytest.skip(f"{name} not built: run hack/build-tools.sh (make tools) to build it into {path.parent}")
    return path


def run(
    argv: Iterable[str | Path], *, check: bool = True, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    args = [str(a) for a in argv]
    result = subprocess.run(args, capture_output=True, text=True, check=False, cwd=cwd, timeout=120)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
        )
    return result


def helm(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([tool("helm"), *args], check=check)


def set_args(values: Mapping[str, Any]) -> list[str]:
    """`--set-json key=<json>` for each value (types kept: lists, numbers, booleans)."""
    args: list[str] = []
    for key, value in values.items():
        args += ["--set-json", f"{key}={json.dumps(value)}"]
    return args


def template(
    values: Mapping[str, Any] | None = None,
    *,
    namespace: str = "mlops-system",
    show_only: str | None = None,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    args: list[str | Path] = ["template", RELEASE, CHART, "--namespace", namespace, *set_args(values or {})]
    if show_only:
        args += ["--show-only", show_only]
    return helm(*args, check=check)


def render(values: Mapping[str, Any] | None = None, *, namespace: str = "mlops-system") -> list[Manifest]:
    """The chart's manifests (templates only, as `helm template` prints them; crds/ not included)."""
    text = template(values, namespace=namespace).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(manifests: Iterable[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def one(manifests: Iterable[Manifest], kind: str) -> Manifest:
    found = by_kind(manifests, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def alert_groups(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The PrometheusRule's spec ({groups: [...]}): exactly a Prometheus rule file."""
    merged = {"metrics.prometheusRule.enabled": True, **(values or {})}
    rule = one(render(merged), "PrometheusRule")
    return rule["spec"]  # type: ignore[no-any-return]


def dashboard(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    config_map = next(
        m for m in render(values) if m["kind"] == "ConfigMap" and "dashboard" in m["metadata"]["name"]
    )
    (text,) = config_map["data"].values()
    return json.loads(text)  # type: ignore[no-any-return]


# Grafana's variables, replaced by what Grafana would put there before PromQL is parsed.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h", "$job": JOB}


def dashboard_exprs(board: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana variables substituted."""
    found = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            found.append((panel["title"], expr))
    return found


def promtool(
    *args: str | Path, cwd: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run([tool("promtool"), *args], cwd=cwd, check=check)


def write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def monitoring_crds() -> Path:
    """The monitoring.coreos.com CRDs (prometheus-operator's own files) hack/build-tools.sh extracts;
    the test is skipped, saying how to get them, if absent."""
    path = default_bin_dir() / "monitoring-crds"
    if not list(path.glob("*.yaml")):
        pytest.skip(
            f"monitoring CRDs not extracted: run hack/build-tools.sh (make tools) to put them in {path}"
        )
    return path
