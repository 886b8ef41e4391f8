"""kopf wiring only: one reconcile per kind on create/update/resume, startup settings, probes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import kopf
import prometheus_client

from .api.v1alpha1 import GROUP, KINDS, VERSION, KindInfo
from .handlers import HANDLERS
from .handlers.base import Outcome, parse_spec, status_patch
from .handlers.context import Clients, ReconcileContext
from .k8s.events import Event, post_event
from .metrics import STATUS_WRITES, observe_reconcile
from .settings import OperatorConfig, configure_kopf

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """What the handlers share in one operator process; filled in by the startup handler."""

    config: OperatorConfig = field(default_factory=OperatorConfig)
    clients: Clients | None = None


RUNTIME = Runtime()


def reconcile_object(info: KindInfo, ctx: ReconcileContext) -> tuple[dict[str, Any], list[Event]]:
    """Reconcile one object: the status changes (empty when nothing changed) and the events to post."""
    with observe_reconcile(info.kind):
        parsed = parse_spec(info.spec_model, ctx.body.get("spec") or {})
        outcome = parsed if isinstance(parsed, Outcome) else HANDLERS[info.kind].reconcile(parsed, ctx)
        changes, transitions = status_patch(ctx.status, outcome, ctx.generation)
        events = [
            Event(
                reason=t.reason,
                message=f"{t.type}={t.status}: {t.message}",
                type="Warning" if t.status == "False" and outcome.phase == "Failed" else "Normal",
            )
            for t in transitions
        ]
        events += outcome.events
        if changes:
            STATUS_WRITES.labels(kind=info.kind).inc()
        return changes, events


def _apply(body: kopf.Body, patch: kopf.Patch, changes: dict[str, Any], events: list[Event]) -> None:
    if changes:
        patch.status.update(changes)
    for event in events:
        post_event(body, event.reason, event.message, type_=event.type)


def _register(info: KindInfo) -> None:
    handler = HANDLERS[info.kind]

    # Sync handlers: kopf runs them in its thread pool, so blocking clients never stall the event loop.
    def reconcile(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        ctx = ReconcileContext(body, RUNTIME.clients, RUNTIME.config)
        _apply(body, patch, *reconcile_object(info, ctx))

    reconcile.__name__ = reconcile.__qualname__ = f"reconcile_{info.singular}"
    for decorator in (kopf.on.create, kopf.on.resume):
        decorator(GROUP, VERSION, info.plural, id="reconcile")(reconcile)
    kopf.on.update(GROUP, VERSION, info.plural, id="reconcile", field="spec")(reconcile)

    if handler.is_due is not None:
        is_due = handler.is_due

        def tick(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
            ctx = ReconcileContext(body, RUNTIME.clients, RUNTIME.config)
            spec = parse_spec(info.spec_model, body.get("spec") or {})
            # Checking is free (no API call); only a due object is reconciled, so idle means no writes.
            if not isinstance(spec, Outcome) and is_due(spec, ctx):
                _apply(body, patch, *reconcile_object(info, ctx))

        tick.__name__ = tick.__qualname__ = f"tick_{info.singular}"
        # The interval is read when this module is imported: MLOPS_TIMER_SECONDS must be set before.
        interval = OperatorConfig().timer_seconds
        kopf.timer(GROUP, VERSION, info.plural, id="tick", interval=interval, initial_delay=interval)(tick)


for _info in KINDS:
    _register(_info)


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
