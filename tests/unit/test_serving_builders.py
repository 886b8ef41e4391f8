"""The serving workload of an InferenceDeployment as plain data: Rollout, Services, AnalysisTemplate,
Deployment."""

from __future__ import annotations

import dataclasses
from typing import Any

from mlops_contract import envvars

from mlops_operator.api.v1alpha1 import DatasetSpec, InferenceDeploymentSpec
from mlops_operator.api.v1alpha1 import kubevalues as kv
from mlops_operator.builders.serving import (
    MODELVERSION_ANNOTATION,
    ServingInputs,
    build_analysis_template,
    build_autoscaler,
    build_deployment,
    build_rollout,
    build_service,
    replicas_handover,
    weight_of_step,
)

DATASET = DatasetSpec.model_validate(
    {"source": {"uri": "s3://data/digits/", "credentialsSecretRef": {"name": "s3-creds"}}}
)


def _inputs(**spec: Any) -> ServingInputs:
    return ServingInputs(
        name="digits",
        namespace="team-a",
        uid="1d2e3f4a-0000-1111-2222-333344445555",
        spec=InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v2"}, **spec}),
        model_version="v2",
        model_name="digits",
        repository_uri="s3://data/engines/triton/digits/abcdef0123456789/",
        dataset=DATASET,
        fetch_image="trainer:1",
        gpu_product="NVIDIA-L4",
        prometheus_address="http://prometheus.monitoring:9090",
    )


def test_default_canary_is_10_analysis_50_analysis_100():
    rollout = build_rollout(_inputs())
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    assert [next(iter(s)) for s in steps] == ["setWeight", "analysis", "setWeight", "analysis", "setWeight"]
    assert [s["setWeight"] for s in steps if "setWeight" in s] == [10, 50, 100]
    analysis = steps[1]["analysis"]
    assert analysis["templates"] == [{"templateName": "digits-analysis"}]
    args = {a["name"]: a for a in analysis["args"]}
    assert args["canary-hash"]["valueFrom"] == {"podTemplateHashValue": "Latest"}
    assert args["count"]["value"] == "5"  # 300 s at the default 60 s interval
    assert rollout["spec"]["strategy"]["canary"]["stableService"] == "digits-triton"
    assert rollout["spec"]["strategy"]["canary"]["canaryService"] == "digits-triton-canary"
    assert rollout["metadata"]["ownerReferences"][0]["kind"] == "InferenceDeployment"


def test_steps_from_the_spec_and_the_weight_each_step_has_set():
    inputs = _inputs(
        rollout={
            "steps": [
                {"setWeight": 20},
                {"pause": {"durationSeconds": 30}},
                {"pause": {}},
                {"setWeight": 100},
            ]
        }
    )
    steps = build_rollout(inputs)["spec"]["strategy"]["canary"]["steps"]
    assert steps == [{"setWeight": 20}, {"pause": {"duration": "30s"}}, {"pause": {}}, {"setWeight": 100}]
    assert [weight_of_step(inputs, i) for i in (0, 1, 3, 4, None)] == [0, 20, 20, 100, 100]


def test_serving_pod_fetches_the_repository_then_runs_triton_hardened_on_the_engines_gpu():
    template = build_rollout(_inputs(resources={"gpus": 1}))["spec"]["template"]
    pod = template["spec"]
    (init,) = pod["initContainers"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in init["env"]}
    assert init["args"] == ["fetch-model-repository"]
    assert env[envvars.REPOSITORY_URI] == "s3://data/engines/triton/digits/abcdef0123456789/"
    assert env[envvars.AWS_SECRET_ACCESS_KEY] == {
        "secretKeyRef": {"name": "s3-creds", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    (triton,) = pod["containers"]
    assert triton["command"] == ["tritonserver"]
    assert "--model-repository=/models" in triton["args"]
    assert triton["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8000}
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert triton["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["automountServiceAccountToken"] is False
    assert template["metadata"]["annotations"]["mlops.dev/modelversion"] == "v2"
    # No GPU asked: no GPU, no product selector.
    cpu = build_rollout(_inputs(resources={"gpus": 0}))["spec"]["template"]["spec"]
    assert "nodeSelector" not in cpu
    assert "nvidia.com/gpu" not in str(cpu["containers"][0]["resources"])


def test_analysis_template_queries_the_canarys_triton_metrics_with_the_spec_thresholds():
    inputs = _inputs(
        rollout={
            "analysis": {
                "successRateMin": 0.995,
                "latencyP95MaxMs": 25,
                "intervalSeconds": 15,
                "failureLimit": 2,
            }
        }
    )
    template = build_analysis_template(inputs)
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    success = metrics["success-rate"]
    assert success["successCondition"] == "result[0] >= 0.995"
    assert success["failureCondition"] == "result[0] < 0.995"
    assert success["failureLimit"] == 2
    assert success["interval"] == "15s"
    query = success["provider"]["prometheus"]["query"]
    assert "nv_inference_request_success" in query
    assert "nv_inference_request_failure" in query
    assert 'rollouts_pod_template_hash="{{args.canary-hash}}"' in query
    assert 'namespace="team-a"' in query
    assert success["provider"]["prometheus"]["address"] == "http://prometheus.monitoring:9090"
    latency = metrics["latency-p95-ms"]
    assert latency["successCondition"] == "result[0] <= 25.0"
    assert 'quantile="0.95"' in latency["provider"]["prometheus"]["query"]


def test_recreate_is_a_deployment_and_services_select_the_pods_by_uid():
    deployment = build_deployment(_inputs(rollout={"strategy": "recreate"}))
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector == {"mlops.dev/inferencedeployment-uid": "1d2e3f4a-0000-1111-2222-333344445555"}
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    service = build_service(_inputs())
    assert service["spec"]["selector"] == selector
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "http": 8000,
        "grpc": 8001,
        "metrics": 8002,
    }


def test_without_autoscaling_the_spec_sizes_the_workload():
    assert build_rollout(_inputs(replicas=3))["spec"]["replicas"] == 3
    existing = dataclasses.replace(_inputs(replicas=5), workload_exists=True)
    assert build_deployment(existing)["spec"]["replicas"] == 5


def test_with_autoscaling_the_workload_starts_at_the_minimum_then_leaves_replicas_to_the_autoscaler():
    scaled = {"replicas": 10, "resources": {"cpu": "2"}, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}
    assert build_rollout(_inputs(**scaled))["spec"]["replicas"] == 2
    existing = dataclasses.replace(_inputs(**scaled), workload_exists=True)
    assert "replicas" not in build_rollout(existing)["spec"]
    assert "replicas" not in build_deployment(existing)["spec"]
    handover = replicas_handover(existing, "Rollout", 3)
    assert handover == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": build_rollout(existing)["metadata"]["name"], "namespace": "team-a"},
        "spec": {"replicas": 3},
    }


def test_the_autoscaler_scales_the_workload_on_cpu_or_on_tritons_queued_requests():
    on_cpu = _inputs(resources={"cpu": "2"}, autoscaling={"minReplicas": 2, "maxReplicas": 6})
    hpa = build_autoscaler(on_cpu, "Rollout")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "name": build_rollout(on_cpu)["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 6)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Resource",
            "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
        }
    ]
    assert hpa["metadata"]["ownerReferences"][0]["uid"] == on_cpu.uid

    queued = _inputs(autoscaling={"minReplicas": 1, "maxReplicas": 3, "targetInflightRequests": 8})
    hpa = build_autoscaler(queued, "Deployment")
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Deployment"
    assert hpa["spec"]["scaleTargetRef"]["apiVersion"] == "apps/v1"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods"
    assert metric["pods"]["metric"]["name"] == "nv_inference_pending_request_count"
    assert metric["pods"]["target"] == {"type": "AverageValue", "averageValue": "8"}


def test_long_names_make_valid_labels_and_the_analysis_selects_the_pods_own_label():
    # Object names may be 253 characters, label values only 63: a label cut at 63 can end in "-" or
    # "." (rejected by the apiserver), and the analysis must query the value the pods really carry.
    long_idep = "digits-" + "a" * 60 + ".serving"
    long_mv = "v2-" + "b" * 59 + ".-" + "c" * 100
    inputs = dataclasses.replace(_inputs(), name=long_idep, model_version=long_mv)
    template = build_rollout(inputs)["spec"]["template"]
    labels = template["metadata"]["labels"]
    assert all(kv.is_label_value(v) for v in labels.values()), labels
    query = build_analysis_template(inputs)["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    assert f'inferencedeployment="{labels["mlops.dev/inferencedeployment"]}"' in query
    assert template["metadata"]["annotations"][MODELVERSION_ANNOTATION] == long_mv  # the full name
