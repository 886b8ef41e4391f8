"""kopf wiring only: one reconcile per kind on create/update/resume, startup settings, probes."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import kopf
import prometheus_client

from .api.v1alpha1 import GROUP, KINDS, VERSION, KindInfo
from .handlers import RECONCILERS
from .handlers.base import Outcome, parse_spec, status_patch
from .k8s.events import Event, post_event
from .metrics import STATUS_WRITES, observe_reconcile
from .settings import OperatorConfig, configure_kopf

log = logging.getLogger(__name__)


def reconcile_object(
    info: KindInfo,
    body: Mapping[str, Any],
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    meta: Mapping[str, Any],
) -> tuple[dict[str, Any], list[Event]]:
    """Reconcile one object: the status changes (empty when nothing changed) and the events to post."""
    with observe_reconcile(info.kind):
        parsed = parse_spec(info.spec_model, spec)
        outcome = parsed if isinstance(parsed, Outcome) else RECONCILERS[info.kind](parsed, body)
        changes, transitions = status_patch(status, outcome, meta.get("generation"))
        events = [
            Event(
                reason=t.reason,
                message=f"{t.type}={t.status}: {t.message}",
                type="Warning" if outcome.phase == "Failed" else "Normal",
            )
            for t in transitions
        ]
        if changes:
            STATUS_WRITES.labels(kind=info.kind).inc()
        return changes, events


def _register(info: KindInfo) -> None:
    # Sync handler: kopf runs it in its thread pool, so blocking clients never stall the event loop.
    def reconcile(
        body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, **_: Any
    ) -> None:
        changes, events = reconcile_object(info, body, spec, status, meta)
        if changes:
            patch.status.update(changes)
        for event in events:
            post_event(body, event.reason, event.message, type_=event.type)

    reconcile.__name__ = reconcile.__qualname__ = f"reconcile_{info.singular}"
    for decorator in (kopf.on.create, kopf.on.resume):
        decorator(GROUP, VERSION, info.plural, id="reconcile")(reconcile)
    kopf.on.update(GROUP, VERSION, info.plural, id="reconcile", field="spec")(reconcile)


for _info in KINDS:
    _register(_info)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = OperatorConfig()
    configure_kopf(settings, config)
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port)
    log.info("mlops-operator started (namespaces=%s)", config.namespaces or "cluster-wide")


@kopf.on.probe(id="watching")
def watching_probe(**_: Any) -> bool:
    return True
