"""Prometheus metrics of the operator itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Histogram

RECONCILE_TOTAL = Counter(
    "mlops_reconcile_total",
    "Reconciles by kind and result (ok, error).",
    ["kind", "result"],
)
RECONCILE_DURATION = Histogram(
    "mlops_reconcile_duration_seconds",
    "Time spent in one reconcile, by kind.",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STATUS_WRITES = Counter(
    "mlops_status_writes_total",
    "Status patches sent, by kind; a reconcile that changes nothing sends none.",
    ["kind"],
)


@contextmanager
def observe_reconcile(kind: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    except Exception:
        RECONCILE_TOTAL.labels(kind=kind, result="error").inc()
        raise
    else:
        RECONCILE_TOTAL.labels(kind=kind, result="ok").inc()
    finally:
        RECONCILE_DURATION.labels(kind=kind).observe(time.perf_counter() - started)
