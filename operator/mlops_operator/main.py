"""kopf wiring only: what triggers a reconcile, and how its result is written.

Every trigger (create/update/resume, a timer tick, an event on a child Job or Pod) ends in
`reconcile_by_name`: read the object fresh, reconcile, write the status changes (if any) with the
object's resourceVersion as a precondition, post events. One path, so two triggers racing on the
same object can never write a stale status over a newer one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import kopf
import prometheus_client
from kubernetes.client.exceptions import ApiException

from .api.v1alpha1 import GROUP, KINDS, VERSION, KindInfo, kind_by_name
from .builders.training import RUN_LABEL
from .handlers import HANDLERS
from .handlers.base import Outcome, parse_spec, status_patch
from .handlers.context import Clients, ReconcileContext
from .k8s.events import Event, post_event
from .metrics import PHASES, STATUS_WRITES, observe_reconcile
from .settings import OperatorConfig, configure_kopf

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the handlers share in one operator process; filled in by the startup handler."""

    config: OperatorConfig = field(default_factory=OperatorConfig)
    clients: Clients | None = None
    locks: defaultdict[tuple[str, str, str], threading.Lock] = field(
        default_factory=lambda: defaultdict(threading.Lock)
    )


RUNTIME = Runtime()


def reconcile_object(info: KindInfo, ctx: ReconcileContext) -> tuple[dict[str, Any], list[Event]]:
    """Reconcile one object: the status changes (empty when nothing changed) and the events to post."""
    with observe_reconcile(info.kind):
        parsed = parse_spec(info.spec_model, ctx.body.get("spec") or {})
        outcome = parsed if isinstance(parsed, Outcome) else HANDLERS[info.kind].reconcile(parsed, ctx)
        changes, transitions = status_patch(ctx.status, outcome, ctx.generation)
        # An event for every change of Ready (so every phase change), and for any other condition
        # only when it turns into a problem.
        events = [
            Event(
                reason=t.reason,
                message=f"{t.type}={t.status}: {t.message}",
                type="Warning"
                if t.status == "False" and (outcome.phase == "Failed" or t.type != "Ready")
                else "Normal",
            )
            for t in transitions
            if t.type == "Ready" or t.status == "False"
        ]
        events += outcome.events
        PHASES.set(info.kind, ctx.namespace, ctx.name, outcome.phase)
        return changes, events


def reconcile_by_name(info: KindInfo, namespace: str, name: str, *, only_if_due: bool = False) -> None:
    """Read, reconcile and write one object; the single path of every trigger."""
    clients = RUNTIME.clients
    assert clients is not None, "the startup handler sets up the clients"
    with RUNTIME.locks[(info.kind, namespace, name)]:
        try:
            body = clients.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, info.plural, name)
        except ApiException as error:
            if error.status == 404:
                PHASES.set(info.kind, namespace, name, None)
                return  # deleted meanwhile: nothing to do
            raise
        ctx = ReconcileContext(body, clients, RUNTIME.config)
        is_due = HANDLERS[info.kind].is_due
        if only_if_due and is_due is not None:
            spec = parse_spec(info.spec_model, body.get("spec") or {})
            if isinstance(spec, Outcome) or not is_due(spec, ctx):
                return
        changes, events = reconcile_object(info, ctx)
        if changes:
            patch = {"metadata": {"resourceVersion": body["metadata"]["resourceVersion"]}, "status": changes}
            try:
                clients.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, namespace, info.plural, name, patch
                )
            except ApiException as error:
                if error.status == 409:  # changed since we read it: look again shortly
                    raise kopf.TemporaryError(
                        f"{info.kind} {name} changed while reconciling", delay=1
                    ) from None
                raise
            STATUS_WRITES.labels(kind=info.kind).inc()
        kopf_body = kopf.Body(body)
        for event in events:
            post_event(kopf_body, event.reason, event.message, type_=event.type)


def _register(info: KindInfo) -> None:
    # Sync handlers: kopf runs them in its thread pool, so blocking clients never stall the event loop.
    def reconcile(name: str, namespace: str | None, **_: Any) -> None:
        reconcile_by_name(info, str(namespace), name)  # all our kinds are namespaced

    reconcile.__name__ = reconcile.__qualname__ = f"reconcile_{info.singular}"
    for decorator in (kopf.on.create, kopf.on.resume):
        decorator(GROUP, VERSION, info.plural, id="reconcile")(reconcile)
    kopf.on.update(GROUP, VERSION, info.plural, id="reconcile", field="spec")(reconcile)

    def forget(name: str, namespace: str | None, **_: Any) -> None:
        PHASES.set(info.kind, str(namespace), name, None)

    # optional: no finalizer is added, so deleting an object never waits for the operator.
    kopf.on.delete(GROUP, VERSION, info.plural, id="forget", optional=True)(forget)

    if HANDLERS[info.kind].is_due is not None:

        async def tick(name: str, namespace: str | None, stopped: kopf.DaemonStopped, **_: Any) -> None:
            # One cheap loop per object (a daemon, not a kopf timer: no log line per tick). Checking
            # is free of writes; only a due object is reconciled, so idle means no writes.
            while not stopped:
                await stopped.wait(RUNTIME.config.timer_seconds)
                if stopped:
                    break
                try:
                    await asyncio.to_thread(reconcile_by_name, info, str(namespace), name, only_if_due=True)
                except Exception:  # the next tick tries again; the daemon must outlive one bad reconcile
                    log.exception("periodic reconcile of %s %s/%s failed", info.kind, namespace, name)

        tick.__name__ = tick.__qualname__ = f"tick_{info.singular}"
        kopf.daemon(GROUP, VERSION, info.plural, id="tick", cancellation_timeout=5)(tick)


for _info in KINDS:
    _register(_info)


def _owner_run(labels: kopf.Labels, namespace: str | None) -> tuple[str, str] | None:
    name = labels.get(RUN_LABEL)
    return (namespace, name) if name and namespace else None


# A TrainingRun follows its Jobs and their pods: any change to one reconciles the run at once.
@kopf.on.event("batch", "v1", "jobs", labels={RUN_LABEL: kopf.PRESENT})
@kopf.on.event("", "v1", "pods", labels={RUN_LABEL: kopf.PRESENT})
def child_changed(labels: kopf.Labels, namespace: str | None, **_: Any) -> None:
    if owner := _owner_run(labels, namespace):
        reconcile_by_name(kind_by_name("TrainingRun"), *owner)


def _load_clients() -> Clients:
    from kubernetes import client, config  # noqa: PLC0415

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return Clients(api=client.ApiClient())


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    RUNTIME.config = OperatorConfig()
    RUNTIME.clients = _load_clients()
    configure_kopf(settings, RUNTIME.config)
    if RUNTIME.config.metrics_port:
        prometheus_client.start_http_server(RUNTIME.config.metrics_port)
    log.info("mlops-operator started (namespaces=%s)", RUNTIME.config.namespaces or "cluster-wide")


@kopf.on.probe(id="watching")
def watching_probe(**_: Any) -> bool:
    return True
