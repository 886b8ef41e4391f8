"""PromQL of the canary analysis, written against Triton's own metrics (pure: strings only).

Names and labels as tritonserver 2.51 exposes them on its metrics port (`/metrics`), checked by
tests/integration/test_triton_serving.py against a real server:

- `nv_inference_request_success{model,version}`: counter of requests that succeeded;
- `nv_inference_request_failure{model,version,reason}`: counter of requests that failed, by reason
  (BACKEND, OTHER, REJECTED, CANCELED);
- `nv_inference_request_duration_us{model,version}`: counter of their summed end-to-end time;
- `nv_inference_request_summary_us{model,version,quantile}`: latency quantiles (0.5 ... 0.999) over the
  server's recent requests, present with `--metrics-config=summary_latencies=true` (which
  `builders.triton.tritonserver_args` sets).

What counts as a failure (checked on 2.51): a request the model failed (the backend raised; reason
BACKEND). Requests Triton refuses before the model (wrong input name, shape, dtype or size, a batch
over max_batch_size) are in neither counter, and the python backend's per-request error responses
count as successes: client errors stay out of the success rate, as 4xx responses do in HTTP SLOs.
Durations and latency quantiles cover successful requests only (a failed one adds to neither).

The counters have no `_total` suffix (Prometheus 3 notes it and keeps the names). Queries aggregate
over every series that matches `model` and the extra labels (e.g. the canary's pods): the success
rate over all of them, latency as the worst replica's quantile (quantiles do not average). With no
requests in the window the success rate is NaN (0/0): the AnalysisTemplate's condition decides
whether that passes (`result[0] >= x` is false for NaN).

`sum()` of nothing is nothing (an empty vector, not 0), and `a / (a + nothing)` is nothing too: were
one counter missing (a failure counter not exported yet, a success counter of a model that has only
failed), the success rate would be no data — an Error measurement — while requests are being
measured. So each side stands in for the other at 0 (`S or F * 0`): the rate is a number whenever
either counter has a series for the pods, and no data only when Prometheus has no series of the
pods at all (not scraped: metrics unavailable, an Error, not a breach).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

SUCCESS = "nv_inference_request_success"
FAILURE = "nv_inference_request_failure"
DURATION_US = "nv_inference_request_duration_us"
LATENCY_SUMMARY_US = "nv_inference_request_summary_us"
MODEL_LABEL = "model"
QUANTILE_LABEL = "quantile"
DEFAULT_WINDOW = "1m"
_WINDOW = re.compile(r"^[0-9]+(ms|s|m|h|d)$")
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selector(model: str, labels: Mapping[str, str] | None = None) -> str:
    """`{model="<model>",<label>="<value>",...}`: exact matches, `model` first, the rest sorted."""
    extra = dict(labels or {})
    for name in extra:
        if not _LABEL_NAME.match(name):
            raise ValueError(f"not a Prometheus label name: {name!r}")
    matchers = [(MODEL_LABEL, model), *sorted((k, v) for k, v in extra.items() if k != MODEL_LABEL)]
    return "{" + ",".join(f'{name}="{_escape(value)}"' for name, value in matchers) + "}"


def _window(window: str) -> str:
    if not _WINDOW.match(window):
        raise ValueError(f"not a PromQL duration: {window!r}")
    return window


def success_rate(model: str, labels: Mapping[str, str] | None = None, window: str = DEFAULT_WINDOW) -> str:
    """Share of requests that succeeded over `window`: success / (success + failure), 0..1."""
    sel, w = selector(model, labels), _window(window)
    s, f = f"sum(rate({SUCCESS}{sel}[{w}]))", f"sum(rate({FAILURE}{sel}[{w}]))"
    succeeded, failed = f"({s} or {f} * 0)", f"({f} or {s} * 0)"
    return f"{succeeded} / ({succeeded} + {failed})"


def latency_p95_ms(model: str, labels: Mapping[str, str] | None = None) -> str:
    """p95 end-to-end request latency in milliseconds, of the slowest matching replica."""
    sel = selector(model, {**(labels or {}), QUANTILE_LABEL: "0.95"})
    return f"max({LATENCY_SUMMARY_US}{sel}) / 1000"


def mean_latency_ms(model: str, labels: Mapping[str, str] | None = None, window: str = DEFAULT_WINDOW) -> str:
    """Mean latency of successful requests over `window` in milliseconds (from counters: exact across
    replicas, unlike quantiles)."""
    sel, w = selector(model, labels), _window(window)
    return f"sum(rate({DURATION_US}{sel}[{w}])) / sum(rate({SUCCESS}{sel}[{w}])) / 1000"
