"""`mlopsctl validate` / `crds`, and settings from the environment."""

from __future__ import annotations

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
        "mlops.dev_inferencedeployments.yaml",
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
