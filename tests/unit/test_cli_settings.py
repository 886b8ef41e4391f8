"""`mlopsctl validate` / `crds`, and settings from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from mlops_operator.cli import main
from mlops_operator.settings import OperatorConfig
from tests.samples import INVALID, valid_samples


def test_validate_accepts_the_samples(capsys):
    assert main(["validate", *map(str, valid_samples())]) == 0
    assert capsys.readouterr().out.count("ok ") == len(valid_samples())


def test_validate_reports_each_invalid_file(capsys):
    files = sorted(INVALID.glob("*.yaml"))
    assert main(["validate", *map(str, files)]) == 1
    err = capsys.readouterr().err
    assert err.count("INVALID ") == len(files)
    assert "spec.source: exactly one of trainingRunRef or artifactURI must be set" in err


def test_crds_command_writes_files(tmp_path, capsys):
    assert main(["crds", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "kopf.dev_peerings.yaml",
        "mlops.dev_datasets.yaml",
        "mlops.dev_driftmonitors.yaml",
        "mlops.dev_inferencedeployments.yaml",
        "mlops.dev_modelpipelines.yaml",
        "mlops.dev_modelversions.yaml",
        "mlops.dev_trainingruns.yaml",
    ]


def test_settings_come_from_mlops_env(monkeypatch):
    monkeypatch.setenv("MLOPS_NAMESPACES", '["team-a", "team-b"]')
    monkeypatch.setenv("MLOPS_LOG_FORMAT", "json")
    monkeypatch.setenv("MLOPS_METRICS_PORT", "9100")
    config = OperatorConfig()
    assert config.namespaces == ["team-a", "team-b"]
    assert config.log_format == "json"
    assert config.metrics_port == 9100
    assert config.peering_name is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("  ", None),
        ("http://prometheus.monitoring.svc:9090", "http://prometheus.monitoring.svc:9090"),
        ("https://prom.example.com/prometheus", "https://prom.example.com/prometheus"),
        ("http://[::1]:9090", "http://[::1]:9090"),
    ],
)
def test_prometheus_address_is_an_http_url_or_none(monkeypatch, value, expected):
    monkeypatch.setenv("MLOPS_PROMETHEUS_ADDRESS", value)
    assert OperatorConfig().prometheus_address == expected


@pytest.mark.parametrize(
    "value",
    [
        "prometheus:9090",
        "prometheus.monitoring.svc",
        "ftp://prom",
        "http://",
        "http://prom:port",
        "http://p?q=1",
    ],
)
def test_a_prometheus_address_that_is_no_url_stops_the_operator_at_startup(monkeypatch, value):
    # An AnalysisTemplate with such an address would abort every canary: refuse it before anything runs.
    monkeypatch.setenv("MLOPS_PROMETHEUS_ADDRESS", value)
    with pytest.raises(ValidationError, match="MLOPS_PROMETHEUS_ADDRESS"):
        OperatorConfig()


def test_prometheus_endpoint_allowlist_from_env(monkeypatch):
    monkeypatch.setenv("MLOPS_PROMETHEUS_ENDPOINT_ALLOWLIST", '["*.team-a.svc", "prom.example.com:443"]')
    assert OperatorConfig().prometheus_endpoint_allowlist == ["*.team-a.svc", "prom.example.com:443"]
    monkeypatch.delenv("MLOPS_PROMETHEUS_ENDPOINT_ALLOWLIST")
    assert OperatorConfig().prometheus_endpoint_allowlist == []
