"""The reconcile engine: watched objects in, status, children and events out.

Wake-ups come only from changes (our objects and children from the informers, including what a
re-list finds after a watch was cut), from due times the objects themselves name
(`Outcome.requeue_after`, and the backoff every transient reason gets), and from a long, jittered
resync from the cache (no API request) as the last line of defence. A reconcile
reads the object and its children from the cache, never from the apiserver, so a settled object
costs nothing. Every reconcile is total: whatever it raises ends as `Ready=False` with a reason, a
message a person can act on and a Warning event, and the object is retried with backoff.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from ..api.v1alpha1 import KindInfo, kind_by_name
from ..handlers import HANDLERS
from ..handlers.base import (
    ATTENTION_REASONS,
    ENGINE_REASONS,
    READY,
    TRANSIENT_REASONS,
    Outcome,
    Unchanged,
    checked_status,
    outage_requeue,
    parse_spec,
    status_patch,
)
from ..handlers.context import Clients, ReconcileContext
from ..k8s.conditions import ConditionUpdate
from ..k8s.events import Event, event_manifest, redact
from ..k8s.naming import uid_label
from ..metrics import (
    FOREIGN_OWNER_CLAIMS,
    PHASES,
    RECONCILE_ERRORS,
    RECONCILE_TOTAL,
    STATUS_WRITES,
    forget_drift,
    observe_reconcile,
)
from ..settings import OperatorConfig
from .cache import Cache, Obj, ObjectKey
from .events import EventPoster
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

# The label a serving pod carries with its InferenceDeployment's UID (builders/serving.py).
SERVING_OWNER_LABEL = uid_label("InferenceDeployment")
RESYNC_JITTER = 0.1


def secret_names(body: Obj) -> set[str]:
    """Names of the Secrets an object refers to: every `…SecretRef`/`secretRef` in its spec, and in
    the specs it pinned in status (a ModelVersion's Dataset, which its InferenceDeployments use)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, Mapping):
            for key, item in value.items():
                named = isinstance(item, Mapping) and item.get("name")
                if str(key).lower().endswith("secretref") and named:
                    found.add(str(named))
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(body.get("spec"))
    walk((body.get("status") or {}).get("pinned"))
    return found


def api_message(error: ApiException) -> str:
    """The apiserver's own message from an error response (its JSON Status), else the HTTP reason."""
    try:
        body = json.loads(error.body or "{}")
    except (TypeError, ValueError):
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return str(message or f"HTTP {error.status} {error.reason}")


def error_condition(error: Exception) -> ConditionUpdate:
    """What an unexpected error says in Ready: a reason a person can search for, and the cause."""
    if isinstance(error, ApiException):
        message = api_message(error)
        if error.status == 422:
            return ConditionUpdate(
                READY, "False", "ChildRejected", f"the apiserver refused a child: {message}"
            )
        if error.status == 403:
            return ConditionUpdate(READY, "False", "Forbidden", f"the apiserver refused a request: {message}")
        return ConditionUpdate(READY, "False", "ApiError", f"Kubernetes API error: {message}")
    return ConditionUpdate(
        READY, "False", "ReconcileError", f"{type(error).__name__}: {error}".replace("\n", " ")
    )


@dataclass
class Engine:
    """One operator process's cache, queue and reconcile loop."""

    config: OperatorConfig
    clients: Clients
    cache: Cache = field(default_factory=Cache)
    queue: WorkQueue[ObjectKey] = field(init=False)
    events: EventPoster = field(init=False)
    _failures: dict[ObjectKey, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        per_namespace = self.config.max_workers_per_namespace or max(1, self.config.workers // 2)
        self.queue = WorkQueue(
            self.process,
            workers=self.config.workers,
            group=lambda key: key[1],  # one namespace never holds more than its share of workers
            max_per_group=per_namespace,
        )
        self.events = EventPoster(self.clients.raw)
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._secret_woken: set[ObjectKey] = set()

    def start(self) -> None:
        self.events.start()
        self.queue.start()
        if self.config.resync_seconds > 0:
            threading.Thread(target=self._resync_loop, name="resync", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()
        self.queue.stop()
        self.events.stop()

    # -- triggers ---------------------------------------------------------------------------------

    def object_event(self, info: KindInfo, event_type: str | None, body: Obj) -> None:
        """One of our objects changed, was listed, or is gone: store it, reconcile it and the objects
        that wait on it (an InferenceDeployment whose ModelVersion was deleted, too)."""
        meta = body["metadata"]
        key = (info.kind, str(meta["namespace"]), str(meta["name"]))
        if event_type == "DELETED":
            self.cache.delete(*key)
            self.queue.forget(key)
            self._failures.pop(key, None)
            PHASES.set(*key, None)
            if info.kind == "DriftMonitor":
                forget_drift(key[1], key[2])
        else:
            self.cache.upsert(info.kind, body)
            self.queue.add(key)
        for dependent in HANDLERS[info.kind].dependents(self.cache, body):
            self.queue.add(dependent)

    def child_event(self, kind: str, event_type: str, obj: Obj) -> None:
        """A child changed or vanished (a watch event, or what a re-list found): reconcile its owner.
        The initial list (SYNC) wakes nobody: every object is reconciled when it is first listed."""
        if event_type == "SYNC":
            return
        if kind == "Secret":
            self._secret_changed(obj)
            return
        owner = self._owner_key(obj)
        if owner is not None:
            self.queue.add(owner)

    def wake_all(self, kind: str) -> None:
        """Reconcile every object of `kind` (the cluster changed under all of them, e.g. Argo
        Rollouts was installed or removed)."""
        for key in self.cache.keys(kind):
            self.queue.add(key)

    def _secret_changed(self, secret: Obj) -> None:
        meta = secret.get("metadata", {})
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        for kind, handler in HANDLERS.items():
            for body in self.cache.in_namespace(kind, namespace):
                if name in secret_names(body):
                    key = (kind, namespace, str(body["metadata"]["name"]))
                    with self._lock:
                        self._secret_woken.add(key)
                    self.queue.add(key)
                    for dependent in handler.dependents(self.cache, body):
                        self.queue.add(dependent)

    def _owner_key(self, obj: Obj) -> ObjectKey | None:
        """The object of ours `obj` belongs to, matched by (namespace, UID): a claim on an object in
        another namespace is a forgery, counted and ignored."""
        owner = self.cache.owner_of(obj)
        if owner is None and self.cache.foreign_claim(obj):
            FOREIGN_OWNER_CLAIMS.labels(kind=str(obj.get("kind"))).inc()
            log.info(
                "ignoring %s %s/%s: its controller ownerReference names an object in another namespace",
                obj.get("kind"),
                obj.get("metadata", {}).get("namespace"),
                obj.get("metadata", {}).get("name"),
            )
            return None
        if obj.get("kind") in ("Pod", "Workload") and owner is not None and owner[0] == "Job":
            # A training or stage pod, or the Kueue Workload of such a Job -> the Job -> its owner.
            job = self.cache.get(*owner)
            owner = self.cache.owner_of(job) if job is not None else None
        elif obj.get("kind") == "Pod" and owner is None:
            # A serving pod's ReplicaSet is not watched: its InferenceDeployment's UID label
            # names the owner instead, honoured only within the pod's own namespace.
            labels = obj.get("metadata", {}).get("labels") or {}
            uid = labels.get(SERVING_OWNER_LABEL)
            owner = self.cache.key_of_uid(str(uid)) if uid else None
            if owner is not None and owner[1] != str(obj.get("metadata", {}).get("namespace")):
                FOREIGN_OWNER_CLAIMS.labels(kind="Pod").inc()
                return None
        return owner if owner is not None and owner[0] in HANDLERS else None

    def _resync_loop(self) -> None:
        """Every object again, from the cache, about every `resync_seconds` (jittered, spread out)."""
        interval = self.config.resync_seconds
        while True:
            jitter = random.uniform(1 - RESYNC_JITTER, 1 + RESYNC_JITTER)  # noqa: S311 (not a secret)
            if self._stopped.wait(interval * jitter):
                return
            for key in self._all_keys():
                self.queue.add(key)

    def _all_keys(self) -> Iterator[ObjectKey]:
        for kind in HANDLERS:
            yield from self.cache.keys(kind)

    # -- the reconcile ------------------------------------------------------------------------------

    def process(self, key: ObjectKey) -> float | None:
        kind, namespace, name = key
        body = self.cache.get(kind, namespace, name)
        if body is None:
            return None  # deleted meanwhile
        info = kind_by_name(kind)
        with self._lock:
            secrets_changed = key in self._secret_woken
            self._secret_woken.discard(key)
        ctx = ReconcileContext(
            body, self.clients, self.config, cache=self.cache, secrets_changed=secrets_changed
        )
        failed: Exception | None = None
        with observe_reconcile(kind):
            try:
                parsed = parse_spec(info.spec_model, body.get("spec") or {})
                result = parsed if isinstance(parsed, Outcome) else HANDLERS[kind].reconcile(parsed, ctx)
            except Exception as error:  # total: every failure becomes a condition, below
                failed = error
                result = self._error_outcome(key, body, error)
        if isinstance(result, Unchanged):
            self._failures.pop(key, None)
            RECONCILE_TOTAL.labels(kind=kind, result="ok").inc()
            self._set_phase(key, (body.get("status") or {}).get("phase"))
            return result.requeue_after
        requeue = result.requeue_after
        if requeue is None:
            requeue = self._transient_retry(body, result)
        if failed is None:
            self._failures.pop(key, None)
        try:
            self._write(info, body, result)
        except _ConflictError:
            RECONCILE_TOTAL.labels(kind=kind, result="ok" if failed is None else "error").inc()
            return 1.0  # the object changed under us: its watch event is on the way; look again
        except Exception as error:
            log.warning(
                "writing the status of %s %s/%s failed: %s", kind, namespace, name, redact(str(error))
            )
            if failed is None:
                failed = error
                RECONCILE_ERRORS.labels(kind=kind, reason=type(error).__name__).inc()
                try:  # one more try with only the error in Ready
                    self._write(info, body, self._error_outcome(key, body, error, count=False))
                except Exception as again:
                    log.warning("and so did reporting it: %s", redact(str(again)))
            requeue = self._backoff(key)
        RECONCILE_TOTAL.labels(kind=kind, result="ok" if failed is None else "error").inc()
        self._set_phase(key, result.phase)
        return requeue

    def _set_phase(self, key: ObjectKey, phase: str | None) -> None:
        """The object's phase in `mlops_objects`, unless it was deleted while it was reconciled (its
        deletion already took it out; a late set would count it forever)."""
        if self.cache.get(*key) is not None:
            PHASES.set(*key, phase)
            if self.cache.get(*key) is None:  # deleted between the check and the set
                PHASES.set(*key, None)

    def _transient_retry(self, body: Obj, outcome: Outcome) -> float | None:
        """The one retry rule of every kind: an outcome whose Ready reason is transient and that
        names no due time of its own is looked at again after half the time it has been failing
        (within the retry settings), so no blip leaves an object waiting for an event that never
        comes."""
        ready = next((c for c in outcome.conditions if c.type == READY), None)
        if ready is None or ready.status != "False" or ready.reason not in TRANSIENT_REASONS:
            return None
        conditions = (body.get("status") or {}).get("conditions")
        return outage_requeue(conditions, ready.reason, datetime.now(UTC), self.config)

    def _error_outcome(self, key: ObjectKey, body: Obj, error: Exception, *, count: bool = True) -> Outcome:
        if count:
            RECONCILE_ERRORS.labels(kind=key[0], reason=type(error).__name__).inc()
        log.warning(
            "reconciling %s %s/%s failed: %s",
            *key,
            redact(str(error)),
            exc_info=not isinstance(error, ApiException | ValidationError),
        )
        condition = error_condition(error)
        if isinstance(error, ValidationError):
            condition = ConditionUpdate(
                READY, "False", "InvalidStatus", f"the status would be invalid: {error}"
            )
        status = body.get("status") or {}
        return Outcome(
            phase=str(status.get("phase") or "Pending"),
            conditions=(condition,),
            requeue_after=self._backoff(key),
        )

    def _backoff(self, key: ObjectKey) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        base, most = self.config.retry_min_seconds, self.config.retry_max_seconds
        return float(min(most, base * 2 ** min(failures - 1, 30)))

    def _write(self, info: KindInfo, body: Obj, outcome: Outcome) -> None:
        status: Mapping[str, Any] = body.get("status") or {}
        generation = body.get("metadata", {}).get("generation")
        changes, transitions = status_patch(
            status, outcome, int(generation) if generation is not None else None
        )
        kind, meta = info.kind, body["metadata"]
        if changes:
            changes = checked_status(info.status_model, status, changes)
            patch = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": changes}
            try:
                written = self.clients.raw.patch_status(info.plural, meta["namespace"], meta["name"], patch)
            except ApiException as error:
                if error.status == 409:
                    raise _ConflictError() from None
                if error.status == 404:
                    return
                raise
            STATUS_WRITES.labels(kind=kind).inc()
            written.setdefault("kind", kind)
            self.cache.upsert(kind, written)
        events = [
            Event(
                reason=t.reason,
                message=f"{t.type}={t.status}: {t.message}",
                type="Warning"
                if t.status == "False" and _is_problem(outcome, t.type, t.reason)
                else "Normal",
            )
            for t in transitions
            if t.type == READY or t.status == "False"
        ]
        events += [e for e in outcome.events if not any(e.reason == t.reason for t in transitions)]
        for event in events:
            self.post_event(body, event)

    def post_event(self, body: Obj, event: Event) -> None:
        self.events.post(body["metadata"]["namespace"], event_manifest(body, event))


class _ConflictError(Exception):
    pass


def _is_problem(outcome: Outcome, type_: str, reason: str) -> bool:
    return (
        outcome.phase in ("Failed", "Rejected", "Degraded")
        or type_ != READY
        or reason in ENGINE_REASONS
        or reason in ATTENTION_REASONS
    )
