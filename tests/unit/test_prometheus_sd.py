"""The file SD helper the local pod runner publishes serving pods' metrics ports with, and the Prometheus
configuration of the local control plane that reads it."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import yaml

from mlops_operator.dev import prometheus_sd as sd
from mlops_operator.dev.controlplane import PROMETHEUS_SD_JOB, crd_name, prometheus_config


def test_with_target_adds_replaces_and_keeps_order() -> None:
    groups = sd.with_target([], "127.0.0.1:8002", {"namespace": "a", "pod": "p0"})
    groups = sd.with_target(groups, "127.0.0.1:8003", {"namespace": "a", "pod": "p1"})
    assert groups == [
        {"targets": ["127.0.0.1:8002"], "labels": {"namespace": "a", "pod": "p0"}},
        {"targets": ["127.0.0.1:8003"], "labels": {"namespace": "a", "pod": "p1"}},
    ]
    relabelled = sd.with_target(groups, "127.0.0.1:8002", {"namespace": "a", "pod": "p2"})
    assert relabelled[0] == {"targets": ["127.0.0.1:8002"], "labels": {"namespace": "a", "pod": "p2"}}
    assert relabelled[1] == groups[1]
    assert groups[0]["labels"]["pod"] == "p0"  # pure: the input is left alone


def test_without_target() -> None:
    groups = sd.with_target([], "h:1", {})
    assert sd.without_target(groups, "h:2") == groups
    assert sd.without_target(groups, "h:1") == []


@pytest.mark.parametrize("address", ["localhost", "http://h:1", "h:port", "h:1/metrics", ""])
def test_rejects_what_is_not_host_port(address: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        sd.with_target([], address, {})


@pytest.mark.parametrize("label", ["__address__", "1st", "app.kubernetes.io/name", "a-b"])
def test_rejects_label_names_prometheus_would_not_take(label: str) -> None:
    with pytest.raises(ValueError, match="label name"):
        sd.with_target([], "h:1", {label: "x"})


def test_publish_and_unpublish_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sd" / "targets.json"
    assert sd.read_targets(path) == []
    sd.unpublish(path, "h:1")  # nothing there: fine, and no file is written for it
    assert not path.exists()
    sd.publish(path, "h:1", {"pod": "p0"})
    sd.publish(path, "h:2", {"pod": "p1"})
    assert json.loads(path.read_text()) == [
        {"labels": {"pod": "p0"}, "targets": ["h:1"]},
        {"labels": {"pod": "p1"}, "targets": ["h:2"]},
    ]
    sd.unpublish(path, "h:1")
    assert sd.read_targets(path) == [{"targets": ["h:2"], "labels": {"pod": "p1"}}]
    # Only the file and its lock: no temporary files left behind.
    assert sorted(p.name for p in path.parent.iterdir()) == [".targets.json.lock", "targets.json"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_concurrent_publishers_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"

    def publish(first: int) -> None:
        for port in range(first, first + 25):
            sd.publish(path, f"127.0.0.1:{port}", {"pod": f"p{port}"})

    threads = [threading.Thread(target=publish, args=(1000 + 100 * i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(sd.read_targets(path)) == 100


def test_parse_reads_what_prometheus_reads() -> None:
    assert sd.parse("") == []
    assert sd.parse('[{"targets": ["h:1"]}]') == [{"targets": ["h:1"], "labels": {}}]
    with pytest.raises(ValueError, match="JSON list"):
        sd.parse("{}")


def test_prometheus_config_scrapes_the_sd_file_every_second(tmp_path: Path) -> None:
    config = prometheus_config(tmp_path / "targets.json")
    assert config["global"]["scrape_interval"] == "1s"
    assert config["global"]["scrape_timeout"] == "1s"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == PROMETHEUS_SD_JOB == "triton"
    assert job["file_sd_configs"] == [{"files": [str(tmp_path / "targets.json")], "refresh_interval": "5s"}]
    assert job["honor_labels"] is True  # Triton's own `model` label wins over a target's
    assert job["fallback_scrape_protocol"] == "PrometheusText0.0.4"
    yaml.safe_dump(config)  # what the control plane writes


def test_crd_name_reads_metadata_name(tmp_path: Path) -> None:
    crd = tmp_path / "crd.yaml"
    crd.write_text(
        "apiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n"
        "  annotations:\n    x: y\n  name: rollouts.argoproj.io\nspec:\n  names:\n    kind: Rollout\n"
    )
    assert crd_name(crd) == "rollouts.argoproj.io"
