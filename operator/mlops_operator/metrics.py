"""Prometheus metrics of the operator itself."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import REGISTRY, Collector

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
RECONCILE_ERRORS = Counter(
    "mlops_reconcile_errors_total",
    "Reconciles that ended in an unexpected error (turned into Ready=False), by kind and error type.",
    ["kind", "reason"],
)
FOREIGN_OWNER_CLAIMS = Counter(
    "mlops_foreign_owner_claims_total",
    "Children (by kind) whose controller ownerReference names one of our objects in another "
    "namespace: a forged claim, ignored (never matched to that object).",
    ["kind"],
)
RELIST_CHANGES = Counter(
    "mlops_relist_changes_total",
    "Changes a re-list found that the broken watch had not delivered, by kind and event type.",
    ["kind", "type"],
)
EVENTS_DROPPED = Counter(
    "mlops_events_dropped_total",
    "Kubernetes events not posted because the operator's event queue was full.",
)
STATUS_WRITES = Counter(
    "mlops_status_writes_total",
    "Status patches sent, by kind; a reconcile that changes nothing sends none.",
    ["kind"],
)


REGISTRY_REQUESTS = Counter(
    "mlops_registry_requests_total",
    "Requests sent to a model registry, by provider, operation and result (ok, unavailable, rejected, "
    "notfound).",
    ["provider", "operation", "result"],
)

TRAINING_ATTEMPTS = Counter("mlops_training_attempts_total", "Training attempts started.", ["namespace"])
TRAINING_GPU_SECONDS = Counter(
    "mlops_training_gpu_seconds_total",
    "GPU-seconds held by training attempts (nodes x GPUs x wall time).",
    ["namespace"],
)
TRAINING_TIME_TO_START = Histogram(
    "mlops_training_time_to_start_seconds",
    "From a TrainingRun's start to its first attempt running (queueing, scheduling, image pull).",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
)
TRAINING_QUEUE_SECONDS = Histogram(
    "mlops_trainingrun_queue_seconds",
    "How long a TrainingRun waited for capacity in one stretch (Queued: unschedulable pods, or a Job "
    "Kueue had not admitted), observed when it leaves the queue; by the LocalQueue ('' without Kueue).",
    ["queue"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400),
)
TRAINING_DURATION = Histogram(
    "mlops_training_duration_seconds",
    "From a TrainingRun's start to its end, by result.",
    ["result"],
    buckets=(60, 300, 900, 1800, 3600, 7200, 14400, 28800, 86400, 172800),
)

MODELVERSION_COMPILE_SECONDS = Histogram(
    "mlops_modelversion_compile_seconds",
    "Time a ModelVersion's compile Job took, from its creation to its end, by target.",
    ["target"],
    buckets=(5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
MODELVERSION_GATE_FAILURES = Counter(
    "mlops_modelversion_gate_failures_total",
    "Acceptance gates a ModelVersion failed (it is Rejected), by gate.",
    ["gate"],
)
MODELVERSION_REGISTRATIONS = Counter(
    "mlops_modelversion_registrations_total",
    "ModelVersions registered in a model registry, by provider.",
    ["provider"],
)

ROLLOUTS_STARTED = Counter(
    "mlops_rollouts_started_total",
    "Rollouts of a new ModelVersion an InferenceDeployment started.",
    ["namespace"],
)
ROLLOUTS_PROMOTED = Counter(
    "mlops_rollouts_promoted_total",
    "Canaries promoted to stable (the new version serves 100%).",
    ["namespace"],
)
ROLLOUTS_ABORTED = Counter(
    "mlops_rollouts_aborted_total",
    "Canaries aborted (failed analysis): the stable version kept serving.",
    ["namespace"],
)


class PhaseCollector(Collector):
    """`mlops_objects{kind, phase}`: how many objects of each kind are in each phase right now."""

    def __init__(self) -> None:
        self.phases: dict[tuple[str, str, str], str] = {}

    def set(self, kind: str, namespace: str, name: str, phase: str | None) -> None:
        if phase is None:
            self.phases.pop((kind, namespace, name), None)
        else:
            self.phases[(kind, namespace, name)] = phase

    def collect(self) -> list[GaugeMetricFamily]:
        family = GaugeMetricFamily("mlops_objects", "Objects by kind and phase.", labels=["kind", "phase"])
        counts: dict[tuple[str, str], int] = {}
        for (kind, _, _), phase in list(self.phases.items()):
            counts[(kind, phase)] = counts.get((kind, phase), 0) + 1
        for (kind, phase), count in sorted(counts.items()):
            family.add_metric([kind, phase], count)
        return [family]


PHASES = PhaseCollector()
REGISTRY.register(PHASES)


@contextmanager
def observe_reconcile(kind: str) -> Iterator[None]:
    """Time one reconcile. Its result (ok, error) is counted by the engine once the outcome is
    written: an exception the engine turns into a condition, or a refused status write, is an error."""
    started = time.perf_counter()
    try:
        yield
    finally:
        RECONCILE_DURATION.labels(kind=kind).observe(time.perf_counter() - started)


DRIFT_SHARE = Gauge(
    "mlops_drift_share",
    "A DriftMonitor's drifted share of the tested columns at its last successful check.",
    ["namespace", "name"],
)
DRIFT_COLUMN_SCORE = Gauge(
    "mlops_drift_column_score",
    "A DriftMonitor's per-column drift score at its last successful check (the columns of the check's "
    "summary only, at most 12), by the statistical test used.",
    ["namespace", "name", "column", "method"],
)
DRIFT_DRIFTED = Gauge(
    "mlops_drift_drifted",
    "1 while a DriftMonitor's Drifted condition is True (its last check found the data drifted), else 0.",
    ["namespace", "name"],
)
_DRIFT_COLUMNS: dict[tuple[str, str], set[tuple[str, str]]] = {}


def set_drift(
    namespace: str, name: str, drifted: bool, share: float | None, columns: list[tuple[str, str, float]]
) -> None:
    """The drift gauges of one DriftMonitor after a check: the old column series go, the new come."""
    key = (namespace, name)
    DRIFT_DRIFTED.labels(namespace=namespace, name=name).set(1 if drifted else 0)
    if share is not None:
        DRIFT_SHARE.labels(namespace=namespace, name=name).set(share)
    seen = {(column, method) for column, method, _ in columns}
    for column, method in _DRIFT_COLUMNS.get(key, set()) - seen:
        DRIFT_COLUMN_SCORE.remove(namespace, name, column, method)
    for column, method, score in columns:
        DRIFT_COLUMN_SCORE.labels(namespace=namespace, name=name, column=column, method=method).set(score)
    _DRIFT_COLUMNS[key] = seen


def forget_drift(namespace: str, name: str) -> None:
    """A deleted DriftMonitor's series go with it."""
    for column, method in _DRIFT_COLUMNS.pop((namespace, name), set()):
        DRIFT_COLUMN_SCORE.remove(namespace, name, column, method)
    for gauge in (DRIFT_SHARE, DRIFT_DRIFTED):
        with suppress(KeyError):
            gauge.remove(namespace, name)
