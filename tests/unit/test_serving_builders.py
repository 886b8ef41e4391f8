"""The serving workload of an InferenceDeployment as plain data: Rollout, the endpoint Service,
AnalysisTemplate, Deployment; the Prometheus the analysis may query; what counts as drift."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlops_contract import envvars
from pydantic import ValidationError

from mlops_operator.api.v1alpha1 import DatasetSpec, InferenceDeploymentSpec
from mlops_operator.api.v1alpha1 import kubevalues as kv
from mlops_operator.builders import analysis_queries
from mlops_operator.builders.drift import DESIRED_HASH_ANNOTATION, desired_hash, differences, drifted
from mlops_operator.builders.serving import (
    ANALYSIS_DISABLED,
    MODELVERSION_ANNOTATION,
    ServingInputs,
    analysis_address,
    analysis_disabled,
    build_analysis_template,
    build_autoscaler,
    build_deployment,
    build_rollout,
    build_service,
    canary_labels,
    children,
    endpoint,
    obsolete_children,
    replicas_handover,
    weight_of_step,
)
from mlops_operator.integrations.endpoints import EndpointNotAllowedError
from mlops_operator.settings import OperatorConfig
from tests.helmchart import ROOT, promtool

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


# -- the endpoint: every serving pod (issue 15 item 7) ---------------------------------------------


def _pod_labels(template: dict[str, Any], pod_template_hash: str) -> dict[str, str]:
    """The labels of one ReplicaSet's pods: the template's, plus the hash Argo Rollouts adds."""
    return {**template["metadata"]["labels"], "rollouts-pod-template-hash": pod_template_hash}


def test_the_endpoint_service_selects_stable_and_canary_pods_and_no_rollout_pins_it():
    inputs = _inputs(replicas=3)
    rollout = build_rollout(inputs)
    canary = rollout["spec"]["strategy"]["canary"]
    # Argo Rollouts narrows the selector of a Service the Rollout names to one pod-template-hash:
    # the Rollout names none (optional without trafficRouting), so nothing narrows the endpoint.
    assert "stableService" not in canary
    assert "canaryService" not in canary
    assert "trafficRouting" not in canary
    v1 = build_rollout(dataclasses.replace(inputs, model_version="v1", repository_uri="s3://data/v1/"))
    stable_pod = _pod_labels(v1["spec"]["template"], "5d8f7c6b9")
    canary_pod = _pod_labels(rollout["spec"]["template"], "7c9b8d6f5")
    kinds = [c["kind"] for c in children(inputs, "Rollout")]
    assert kinds == ["Service", "AnalysisTemplate", "Rollout"]
    (service,) = [c for c in children(inputs, "Rollout") if c["kind"] == "Service"]
    assert service["metadata"]["name"] == "digits-triton"
    assert endpoint(inputs) == "http://digits-triton.team-a.svc:8000"
    selector = service["spec"]["selector"]
    assert selector.items() <= stable_pod.items()
    assert selector.items() <= canary_pod.items()
    assert "rollouts-pod-template-hash" not in selector
    # The analysis still tells the canary's pods from the stable ones: by the pods' own hash label.
    query = build_analysis_template(inputs)["spec"]["metrics"][0]["provider"]["prometheus"]["query"]
    assert 'rollouts_pod_template_hash="{{args.canary-hash}}"' in query
    assert (
        canary_labels(inputs, "7c9b8d6f5")["rollouts_pod_template_hash"]
        == canary_pod["rollouts-pod-template-hash"]
    )
    # The canary Service of older versions is gone from the children: the handler deletes it.
    assert ("Service", "digits-triton-canary") in obsolete_children(inputs, "Rollout")


def test_recreate_has_the_same_endpoint_and_no_analysis():
    inputs = _inputs(rollout={"strategy": "recreate"})
    built = children(inputs, "Deployment")
    assert [c["kind"] for c in built] == ["Service", "Deployment"]
    assert built[0]["metadata"]["name"] == "digits-triton"
    assert ("AnalysisTemplate", "digits-analysis") in obsolete_children(inputs, "Deployment")


# -- the analysis: wait, then tolerate what the spec says (issue 15 item 6) -------------------------


def test_analysis_waits_one_interval_before_measuring_and_tolerates_errors_as_argo_does_by_default():
    template = build_analysis_template(_inputs(rollout={"analysis": {"intervalSeconds": 20}}))
    for metric in template["spec"]["metrics"]:
        # Without a delay the first measurement runs before the canary's pods have been scraped:
        # "no data returned", an Error spent before anything could be measured.
        assert metric["initialDelay"] == "20s"
        assert metric["interval"] == "20s"
        assert metric["consecutiveErrorLimit"] == 4  # Argo Rollouts' own default, now explicit
        assert metric["inconclusiveLimit"] == 0
        assert metric["provider"]["prometheus"]["address"] == "http://prometheus.monitoring:9090"


def test_analysis_delay_and_tolerances_come_from_the_spec():
    inputs = _inputs(
        rollout={
            "analysis": {
                "intervalSeconds": 30,
                "initialDelaySeconds": 45,
                "consecutiveErrorLimit": 10,
                "inconclusiveLimit": 2,
                "failureLimit": 0,
                "latencyP95MaxMs": 50,
            }
        }
    )
    metrics = build_analysis_template(inputs)["spec"]["metrics"]
    assert len(metrics) == 2
    for metric in metrics:
        assert metric["initialDelay"] == "45s"
        assert metric["consecutiveErrorLimit"] == 10
        assert metric["inconclusiveLimit"] == 2
        assert metric["failureLimit"] == 0
    zero = build_analysis_template(_inputs(rollout={"analysis": {"initialDelaySeconds": 0}}))
    assert zero["spec"]["metrics"][0]["initialDelay"] == "0s"


@pytest.mark.parametrize(
    "analysis",
    [
        {"consecutiveErrorLimit": -1},
        {"consecutiveErrorLimit": 101},
        {"inconclusiveLimit": -1},
        {"initialDelaySeconds": -5},
        {"initialDelaySeconds": 3601},
    ],
)
def test_analysis_tolerances_are_bounded_by_the_schema(analysis):
    with pytest.raises(ValidationError):
        InferenceDeploymentSpec.model_validate(
            {"modelVersionRef": {"name": "v2"}, "rollout": {"analysis": analysis}}
        )
    crd = yaml.safe_load((ROOT / "crds" / "mlops.dev_inferencedeployments.yaml").read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    fields = spec["properties"]["rollout"]["properties"]["analysis"]["properties"]
    assert (fields["consecutiveErrorLimit"]["minimum"], fields["consecutiveErrorLimit"]["maximum"]) == (
        0,
        100,
    )
    assert (fields["inconclusiveLimit"]["minimum"], fields["inconclusiveLimit"]["maximum"]) == (0, 100)
    assert (fields["initialDelaySeconds"]["minimum"], fields["initialDelaySeconds"]["maximum"]) == (0, 3600)


def _evaluate(tmp_path: Path, expr: str, series: dict[str, str], expected: list[dict[str, Any]]) -> None:
    """promtool evaluates `expr` over `series` (1 sample per 10 s) at 5 minutes and compares."""
    rules = tmp_path / "rules.yaml"
    rules.write_text("groups: []\n")
    test = {
        "rule_files": [rules.name],
        "evaluation_interval": "10s",
        "tests": [
            {
                "interval": "10s",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "promql_expr_test": [{"expr": expr, "eval_time": "5m", "exp_samples": expected}],
            }
        ],
    }
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(test))
    result = promtool("test", "rules", path.name, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


CANARY = 'model="digits",rollouts_pod_template_hash="c4n4ry"'


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        # 9 successes and 1 failure every 10 s: 0.9.
        (
            {
                f"nv_inference_request_success{{{CANARY}}}": "0+9x40",
                f'nv_inference_request_failure{{{CANARY},reason="BACKEND"}}': "0+1x40",
            },
            [{"labels": "{}", "value": 0.9}],
        ),
        # No failure counter exported (yet): still a number, not "no data returned".
        ({f"nv_inference_request_success{{{CANARY}}}": "0+5x40"}, [{"labels": "{}", "value": 1}]),
        # Only failures: 0, a breach, not an error.
        (
            {f'nv_inference_request_failure{{{CANARY},reason="BACKEND"}}': "0+3x40"},
            [{"labels": "{}", "value": 0}],
        ),
        # The stable pods' requests do not count for the canary: no canary series, no data (Error).
        ({'nv_inference_request_success{model="digits",rollouts_pod_template_hash="st4ble"}': "0+5x40"}, []),
    ],
    ids=["both", "success-only", "failure-only", "no-canary-series"],
)
def test_the_success_rate_is_a_number_whenever_the_canary_has_been_measured(tmp_path, series, expected):
    expr = analysis_queries.success_rate("digits", {"rollouts_pod_template_hash": "c4n4ry"}, "1m")
    _evaluate(tmp_path, expr, series, expected)


# -- where the analysis may send its queries (issue 15 item 14) ------------------------------------


def _config(address: str | None = None, allowlist: list[str] | None = None) -> OperatorConfig:
    return OperatorConfig(prometheus_address=address, prometheus_endpoint_allowlist=allowlist or [])


def _spec(**rollout: Any) -> InferenceDeploymentSpec:
    return InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v2"}, "rollout": rollout})


def test_the_analysis_queries_the_operators_prometheus_unless_the_spec_names_an_allowed_one():
    own = "http://prometheus.monitoring.svc:9090"
    assert analysis_address(_spec(), _config(own)) == own
    team = "https://prom.team-a.example.com"
    assert (
        analysis_address(_spec(analysis={"prometheusAddress": team}), _config(own, ["*.example.com"])) == team
    )
    # The operator's own Prometheus may always be named, on another path too.
    assert (
        analysis_address(_spec(analysis={"prometheusAddress": f"{own}/prom"}), _config(own)) == f"{own}/prom"
    )


@pytest.mark.parametrize(
    "address",
    [
        "http://169.254.169.254/latest",  # a cloud metadata service
        "http://kubernetes.default.svc:443",
        "http://prometheus.monitoring.svc:9091",  # the operator's host, another port
        "https://bucket.s3.us-east-1.amazonaws.com",  # AWS S3 hosts are not Prometheus
    ],
)
def test_a_tenants_prometheus_address_off_the_allow_list_is_refused(address):
    config = _config("http://prometheus.monitoring.svc:9090", ["prom.example.com"])
    with pytest.raises(EndpointNotAllowedError, match="MLOPS_PROMETHEUS_ENDPOINT_ALLOWLIST"):
        analysis_address(_spec(analysis={"prometheusAddress": address}), config)


def test_the_operators_own_ipv6_prometheus_may_be_named_and_only_its_port():
    config = _config("http://[fd00::9]:9090")
    assert analysis_address(_spec(analysis={"prometheusAddress": "http://[fd00::9]:9090/x"}), config)
    with pytest.raises(EndpointNotAllowedError, match=r"fd00::9:9091"):
        analysis_address(_spec(analysis={"prometheusAddress": "http://[fd00::9]:9091"}), config)


def test_an_address_no_analysis_uses_is_not_checked():
    config = _config(None, [])
    bad = {"prometheusAddress": "http://169.254.169.254"}
    assert analysis_address(_spec(strategy="recreate", analysis=bad), config) is None
    no_analysis = [{"setWeight": 50}, {"pause": {}}, {"setWeight": 100}]
    assert analysis_address(_spec(steps=no_analysis, analysis=bad), config) is None


def test_without_any_prometheus_the_canary_runs_unmeasured_and_says_so():
    assert analysis_address(_spec(), _config(None)) is None
    inputs = dataclasses.replace(_inputs(), prometheus_address=None)
    steps = build_rollout(inputs)["spec"]["strategy"]["canary"]["steps"]
    # No AnalysisTemplate with `address: ""` (every canary would abort): each analysis step holds
    # the canary as long, unmeasured.
    assert steps == [
        {"setWeight": 10},
        {"pause": {"duration": "300s"}},
        {"setWeight": 50},
        {"pause": {"duration": "300s"}},
        {"setWeight": 100},
    ]
    assert [c["kind"] for c in children(inputs, "Rollout")] == ["Service", "Rollout"]
    assert ("AnalysisTemplate", "digits-analysis") in obsolete_children(inputs, "Rollout")
    with pytest.raises(ValueError, match="no Prometheus"):
        build_analysis_template(inputs)
    message = analysis_disabled(inputs, "Rollout")
    assert message is not None
    assert "MLOPS_PROMETHEUS_ADDRESS" in message
    assert "prometheusAddress" in message
    assert ANALYSIS_DISABLED == "AnalysisDisabled"
    assert analysis_disabled(_inputs(), "Rollout") is None
    assert analysis_disabled(inputs, "Deployment") is None
    assert [weight_of_step(inputs, i) for i in range(6)] == [0, 10, 10, 50, 50, 100]


# -- drift: the operator's fields of each child (issue 15 item 2) ----------------------------------


def _every_child() -> list[dict[str, Any]]:
    scaled = _inputs(resources={"cpu": "500m"}, autoscaling={"minReplicas": 1, "maxReplicas": 3})
    return [*children(scaled, "Rollout"), *children(scaled, "Deployment")[1:]]


def _as_read_back(child: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver returns for a child: defaults, server fields, others' labels and
    annotations added; kind and apiVersion dropped (items of a list response carry neither)."""
    seen = copy.deepcopy(child)
    del seen["kind"], seen["apiVersion"]
    meta = seen["metadata"]
    meta |= {"uid": "u-1", "resourceVersion": "42", "generation": 3, "managedFields": [{"manager": "x"}]}
    meta["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = "{}"
    meta["labels"]["argocd.argoproj.io/instance"] = "serving"
    seen["status"] = {"observedGeneration": 3}
    if child["kind"] == "Service":
        seen["spec"] |= {"clusterIP": "10.0.0.7", "type": "ClusterIP", "sessionAffinity": "None"}
        for port in seen["spec"]["ports"]:
            port["protocol"] = "TCP"
    if child["kind"] in ("Deployment", "Rollout"):
        pod = seen["spec"]["template"]["spec"]
        pod["dnsPolicy"] = "ClusterFirst"
        for container in pod["containers"]:
            container["terminationMessagePath"] = "/dev/termination-log"
            limits = container["resources"].get("limits", {})
            if limits.get("cpu") == "500m":
                limits["cpu"] = "0.5"  # a quantity written another way: the same CPU
        # Another manager's extra env var in an associative list: not the operator's field.
        pod["containers"][0].setdefault("env", []).append({"name": "SIDECAR", "value": "1"})
    return seen


def test_every_child_carries_the_hash_of_what_the_operator_applies():
    for child in _every_child():
        digest = child["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
        assert digest == desired_hash(child), child["kind"]
    a, b = build_service(_inputs()), build_service(dataclasses.replace(_inputs(), uid="other"))
    assert (
        a["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
        != b["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
    )
    # The pod template's annotations are content, the desired-hash is not part of its own hash.
    assert (
        DESIRED_HASH_ANNOTATION not in build_rollout(_inputs())["spec"]["template"]["metadata"]["annotations"]
    )


def test_a_child_as_the_apiserver_returns_it_has_not_drifted():
    for child in _every_child():
        seen = _as_read_back(child)
        assert differences(child, seen, kind=child["kind"]) == []
        assert not drifted(child, seen)


@pytest.mark.parametrize(
    ("kind", "edit", "where"),
    [
        ("Service", lambda o: o.pop("spec") and None, "spec"),
        ("Service", lambda o: o["metadata"]["labels"].pop("app.kubernetes.io/managed-by"), "metadata.labels"),
        ("Service", lambda o: o["spec"]["ports"][0].update(port=9999), "spec.ports.http.port"),
        (
            "Service",
            lambda o: o["spec"]["selector"].update({"rollouts-pod-template-hash": "5d8f"}),
            "spec.selector",
        ),
        ("Service", lambda o: o["metadata"]["ownerReferences"].clear(), "metadata.ownerReferences"),
        ("Rollout", lambda o: o["spec"].update(replicas=7), "spec.replicas"),
        ("Rollout", lambda o: o["spec"]["strategy"]["canary"]["steps"].pop(), "spec.strategy.canary.steps"),
        ("AnalysisTemplate", lambda o: o["spec"]["metrics"][0].update(failureLimit=99), "spec.metrics"),
        ("HorizontalPodAutoscaler", lambda o: o["spec"].update(maxReplicas=50), "spec.maxReplicas"),
        ("Deployment", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(image="x"), "image"),
    ],
    ids=[
        "no-spec",
        "label",
        "port",
        "pinned-selector",
        "owner",
        "replicas",
        "steps",
        "analysis",
        "hpa",
        "image",
    ],
)
def test_a_hand_edit_of_an_operator_field_is_drift(kind, edit, where):
    child = next(c for c in _every_child() if c["kind"] == kind)
    seen = _as_read_back(child)
    edit(seen)
    assert drifted(child, seen)
    assert any(where in path for path in differences(child, seen, kind=kind))


def test_a_missing_child_or_another_desired_hash_is_drift():
    child = build_service(_inputs())
    assert drifted(child, None)
    seen = _as_read_back(child)
    seen["metadata"]["annotations"][DESIRED_HASH_ANNOTATION] = "0000000000000000"
    assert drifted(child, seen)
    del seen["metadata"]["annotations"][DESIRED_HASH_ANNOTATION]
    assert drifted(child, seen)
    # A new desired state (another version) is drift of the workload, not of the Service.
    v3 = dataclasses.replace(_inputs(), model_version="v3", repository_uri="s3://data/v3/")
    assert drifted(build_rollout(v3), _as_read_back(build_rollout(_inputs())))
    assert not drifted(build_service(v3), _as_read_back(child | {"metadata": child["metadata"]}))


def test_argo_rollouts_annotation_on_a_service_it_once_managed_is_not_the_operators_field():
    child = build_service(_inputs())
    seen = _as_read_back(child)
    seen["metadata"]["annotations"]["argo-rollouts.argoproj.io/managed-by-rollouts"] = "digits-triton"
    assert not drifted(child, seen)
