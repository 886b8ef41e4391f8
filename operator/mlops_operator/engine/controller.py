"""The reconcile engine: watched objects in, status, children and events out.

Wake-ups come only from changes (our objects from kopf's watch, children from the label-selected
informers) and from due times the objects themselves name (`Outcome.requeue_after`). A reconcile
reads the object and its children from the cache, never from the apiserver, so a settled object
costs nothing. Every reconcile is total: whatever it raises ends as `Ready=False` with a reason, a
message a person can act on and a Warning event, and the object is retried with backoff.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from ..api.v1alpha1 import KindInfo, kind_by_name
from ..handlers import HANDLERS
from ..handlers.base import (
    ATTENTION_REASONS,
    ENGINE_REASONS,
    READY,
    Outcome,
    Unchanged,
    checked_status,
    parse_spec,
    status_patch,
)
from ..handlers.context import Clients, ReconcileContext
from ..k8s.conditions import ConditionUpdate
from ..k8s.events import Event, event_manifest, redact
from ..k8s.naming import uid_label
from ..metrics import PHASES, RECONCILE_ERRORS, STATUS_WRITES, observe_reconcile
from ..settings import OperatorConfig
from .cache import Cache, Obj, ObjectKey, controller_uid
from .events import EventPoster
from .workqueue import WorkQueue

log = logging.getLogger(__name__)

# The label a serving pod carries with its InferenceDeployment's UID (builders/serving.py).
SERVING_OWNER_LABEL = uid_label("InferenceDeployment")
ERROR_BACKOFF_MIN = 1.0
ERROR_BACKOFF_MAX = 300.0


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
        self.queue = WorkQueue(self.process, workers=self.config.workers)
        self.events = EventPoster(self.clients.raw)

    def start(self) -> None:
        self.events.start()
        self.queue.start()

    def stop(self) -> None:
        self.queue.stop()
        self.events.stop()

    # -- triggers ---------------------------------------------------------------------------------

    def object_event(self, info: KindInfo, event_type: str | None, body: Obj) -> None:
        """One of our objects changed (or was listed): store it and reconcile it."""
        meta = body["metadata"]
        key = (info.kind, str(meta["namespace"]), str(meta["name"]))
        if event_type == "DELETED":
            self.cache.delete(*key)
            self.queue.forget(key)
            self._failures.pop(key, None)
            PHASES.set(*key, None)
            return
        self.cache.upsert(info.kind, body)
        self.queue.add(key)
        for dependent in HANDLERS[info.kind].dependents(self.cache, body):
            self.queue.add(dependent)

    def child_event(self, kind: str, event_type: str, obj: Obj) -> None:
        """A Job or Pod we made changed: reconcile the object it belongs to (by owner UID)."""
        if event_type == "SYNC":
            return  # the initial list: our objects are reconciled when kopf lists them
        owner = self._owner_key(obj)
        if owner is not None:
            self.queue.add(owner)

    def _owner_key(self, obj: Obj) -> ObjectKey | None:
        uid = controller_uid(obj)
        if uid is None:
            return None
        if obj.get("kind") == "Pod":
            # A training pod -> its Job -> the Job's owner. A serving pod's ReplicaSet is not
            # watched: its InferenceDeployment's UID label names the owner instead.
            job_key = self.cache.key_of_uid(uid)
            job = self.cache.get(*job_key) if job_key else None
            labels = obj.get("metadata", {}).get("labels") or {}
            uid = controller_uid(job) if job else labels.get(SERVING_OWNER_LABEL)
            if uid is None:
                return None
        key = self.cache.key_of_uid(uid)
        return key if key is not None and key[0] in HANDLERS else None

    # -- the reconcile ------------------------------------------------------------------------------

    def process(self, key: ObjectKey) -> float | None:
        kind, namespace, name = key
        body = self.cache.get(kind, namespace, name)
        if body is None:
            return None  # deleted meanwhile
        info = kind_by_name(kind)
        ctx = ReconcileContext(body, self.clients, self.config, cache=self.cache)
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
            PHASES.set(kind, namespace, name, (body.get("status") or {}).get("phase"))
            return result.requeue_after
        requeue = result.requeue_after
        if failed is None:
            self._failures.pop(key, None)
        try:
            self._write(info, body, result)
        except _ConflictError:
            return 1.0  # the object changed under us: its watch event is on the way; look again
        except Exception as error:
            log.warning(
                "writing the status of %s %s/%s failed: %s", kind, namespace, name, redact(str(error))
            )
            requeue = self._backoff(key)
            if failed is None:  # one more try with only the error in Ready
                try:
                    self._write(info, body, self._error_outcome(key, body, error))
                except Exception as again:
                    log.warning("and so did reporting it: %s", redact(str(again)))
        PHASES.set(kind, namespace, name, result.phase)
        return requeue

    def _error_outcome(self, key: ObjectKey, body: Obj, error: Exception) -> Outcome:
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
        return float(min(ERROR_BACKOFF_MAX, ERROR_BACKOFF_MIN * 2 ** (failures - 1)))

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
