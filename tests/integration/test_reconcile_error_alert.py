"""MlopsReconcileErrorsHigh on what a really failing reconcile exports.

A ResourceQuota that admits no Job makes every reconcile of a TrainingRun fail at the apiserver
(HTTP 403 from quota admission, not RBAC). The operator must count each as
`mlops_reconcile_total{result="error"}`, and the chart's alert, fed the series the operator really
exposes (its names, labels and growth over a real scrape interval), must fire.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from tests.helmchart import JOB, alert_groups, promtool, tool, write_yaml
from tests.integration.conftest import OperatorProcess, start_operator
from tests.integration.test_trainingrun import _run
from tests.waiting import wait_for

SAMPLE = re.compile(r'^mlops_reconcile_total\{kind="TrainingRun",result="(ok|error)"\} ([0-9.e+]+)$', re.M)


DESCRIPTION = (
    "100% of TrainingRun reconciles ended in an error over the last 10 minutes. The objects' Ready "
    "conditions and the operator log say why."
)


def _counts(operator: OperatorProcess) -> dict[str, float]:
    return {result: float(value) for result, value in SAMPLE.findall(operator.metrics())}


def test_a_reconcile_the_apiserver_refuses_is_an_error_and_fires_the_alert(
    control_plane: Any,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    dataset: str,
    tmp_path: Path,
) -> None:
    tool("promtool")
    core.create_namespaced_resource_quota(
        namespace,
        client.V1ResourceQuota(
            metadata=client.V1ObjectMeta(name="no-jobs"),
            spec=client.V1ResourceQuotaSpec(hard={"count/jobs.batch": "0"}),
        ),
    )
    operator = start_operator(
        control_plane,
        namespace,
        tmp_path / "operator.log",
        {"MLOPS_RETRY_MIN_SECONDS": "0.5", "MLOPS_RETRY_MAX_SECONDS": "2"},
    )
    try:
        custom.create_namespaced_custom_object(
            "mlops.dev", "v1alpha1", namespace, "trainingruns", _run("refused")
        )
        first = wait_for(lambda: (c := _counts(operator)).get("error", 0) >= 1 and c, "a counted error", 90)
        started = time.monotonic()
        time.sleep(10)
        second = _counts(operator)
        elapsed = time.monotonic() - started
        run = custom.get_namespaced_custom_object(
            "mlops.dev", "v1alpha1", namespace, "trainingruns", "refused"
        )
    finally:
        operator.stop()
    ready = next(c for c in run["status"]["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Forbidden"), ready
    assert "exceeded quota" in ready["message"]
    errors_per_second = (second["error"] - first["error"]) / elapsed
    assert errors_per_second > 0, (first, second)  # retried with backoff, each retry counted
    assert second.get("ok", 0) == first.get("ok", 0), (first, second)  # no reconcile of it succeeds

    # The scraped series, as Prometheus would have stored them at a 1m interval for 30 minutes.
    def series(result: str, start: float, per_second: float) -> dict[str, str]:
        values = " ".join(str(round(start + per_second * 60 * i, 3)) for i in range(31))
        return {
            "series": f'mlops_reconcile_total{{job="{JOB}",kind="TrainingRun",result="{result}"}}',
            "values": values,
        }

    test = {
        "rule_files": ["rules.yaml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    series("error", first["error"], errors_per_second),
                    series("ok", first.get("ok", 0), 0.0),
                ],
                "alert_rule_test": [
                    {
                        "eval_time": "25m",
                        "alertname": "MlopsReconcileErrorsHigh",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "kind": "TrainingRun"},
                                "exp_annotations": {
                                    "summary": "TrainingRun reconciles fail.",
                                    "description": DESCRIPTION,
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    write_yaml(tmp_path / "rules.yaml", alert_groups())
    (tmp_path / "scraped_test.yaml").write_text(yaml.safe_dump(test, sort_keys=False))
    result = promtool("test", "rules", "scraped_test.yaml", cwd=tmp_path, check=False)
    assert "SUCCESS" in result.stdout, result.stdout + result.stderr
