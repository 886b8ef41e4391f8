"""kind-config.yaml: it parses as a kind Cluster, and its worker carries the labels the operator's
workloads select on (taken from the Job the operator builds, not written down a second time).

No Docker engine runs here, so `kind create cluster --config kind-config.yaml` is not run.
"""

from __future__ import annotations

from typing import Any

import yaml

from mlops_operator.api.v1alpha1 import DatasetSpec, TrainingRunSpec
from mlops_operator.builders.training import TrainingInputs, build_job
from tests.samples import ROOT, load, valid_samples

CONFIG = ROOT / "kind-config.yaml"


def _config() -> dict[str, Any]:
    doc = yaml.safe_load(CONFIG.read_text())
    assert isinstance(doc, dict)
    return doc


def _node_selector(gpu_product: str) -> dict[str, str]:
    """The nodeSelector of the Job the operator makes for the sample TrainingRun on `gpu_product`."""
    run = load(next(p for p in valid_samples() if "trainingrun" in p.name))
    dataset = load(next(p for p in valid_samples() if "dataset" in p.name))
    spec = {**run["spec"], "resources": {**run["spec"]["resources"], "gpuProduct": gpu_product}}
    job = build_job(
        TrainingInputs(
            name="digits-cnn-r1",
            namespace="mlops-demo",
            uid="uid-1",
            spec=TrainingRunSpec.model_validate(spec),
            dataset=DatasetSpec.model_validate(dataset["spec"]),
            dataset_fingerprint="sha256:" + "0" * 64,
            attempt=1,
            default_image="mlops-trainer:dev",
        )
    )
    selector: dict[str, str] = job["spec"]["template"]["spec"]["nodeSelector"]
    return selector


def test_config_is_a_kind_cluster_with_a_control_plane_and_a_worker() -> None:
    config = _config()
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    assert [node["role"] for node in config["nodes"]] == ["control-plane", "worker"]
    for node in config["nodes"]:
        assert set(node) <= {"role", "image", "labels", "extraMounts", "extraPortMappings"}
        # kind hands labels to the kubelet as strings.
        assert all(isinstance(v, str) for v in node.get("labels", {}).values())


def test_the_worker_is_a_gpu_node_the_operators_jobs_select() -> None:
    (worker,) = [node for node in _config()["nodes"] if node["role"] == "worker"]
    labels = worker["labels"]
    selector = _node_selector("NVIDIA-H100-80GB-HBM3")
    (gpu_key,) = [key for key, value in selector.items() if value == "NVIDIA-H100-80GB-HBM3"]
    assert gpu_key.startswith("nvidia.com/")  # a label of NVIDIA's GPU feature discovery
    # Every label the Job selects on is on the worker, with the value the Job asks for.
    assert selector.items() <= labels.items()
    # The control plane carries no GPU label: GPU workloads never land there.
    (control,) = [node for node in _config()["nodes"] if node["role"] == "control-plane"]
    assert gpu_key not in control.get("labels", {})


def test_readme_explains_how_to_use_it() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "kind create cluster --config kind-config.yaml" in readme
    assert "no Docker engine" in readme
