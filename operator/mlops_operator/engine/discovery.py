"""Argo Rollouts, followed while the operator runs: installed later, removed, installed again.

The Rollout CRD is watched (one object, by name). While it is established, Rollouts and
AnalysisTemplates are watched like every other child and `clients.rollouts` is True: new
InferenceDeployments run as Rollouts. When it goes, their informers stop, what the cache held of them
is dropped (waking their owners), and every InferenceDeployment is reconciled again so that it falls
back to a Deployment and says so, instead of failing applies with 404 and reporting Available.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .cache import Obj
from .controller import Engine
from .informer import ANALYSIS_TEMPLATES, CRDS, ROLLOUTS, Informer, WatchedResource, wait_all

log = logging.getLogger(__name__)

ROLLOUT_CRD = "rollouts.argoproj.io"
ROLLOUT_KINDS: tuple[WatchedResource, ...] = (ROLLOUTS, ANALYSIS_TEMPLATES)

InformerFactory = Callable[[WatchedResource, str | None], Informer]


def established(crd: Obj) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


class RolloutsDiscovery:
    """Starts and stops the Argo Rollouts informers as its CRD comes and goes."""

    def __init__(self, engine: Engine, scopes: list[str | None], make_informer: InformerFactory) -> None:
        self._engine = engine
        self._scopes = scopes
        self._make = make_informer
        self._informers: list[Informer] = []
        self._lock = threading.Lock()
        self.crd_informer = Informer(
            engine.clients.raw,
            CRDS,
            None,
            label_selector=None,
            field_selector=f"metadata.name={ROLLOUT_CRD}",
            cache=engine.cache,
            on_event=self.crd_event,
        )

    @property
    def informers(self) -> list[Informer]:
        with self._lock:
            return list(self._informers)

    def crd_event(self, kind: str, event_type: str, crd: Obj) -> None:
        available = (
            event_type != "DELETED" and established(crd) and not crd["metadata"].get("deletionTimestamp")
        )
        with self._lock:
            if available == self._engine.clients.rollouts and (self._informers or not available):
                return
            if available:
                self._informers = [self._make(r, ns) for r in ROLLOUT_KINDS for ns in self._scopes]
                try:
                    wait_all(self._informers, timeout=60)
                except TimeoutError as error:  # the watches go on; reconciles start anyway
                    log.warning("Argo Rollouts informers not synced: %s", error)
                self._engine.clients.rollouts = True
                log.info("Argo Rollouts is installed: InferenceDeployments run as Rollouts")
            else:
                for informer in self._informers:
                    informer.stop()
                self._informers = []
                self._engine.clients.rollouts = False
                for resource in ROLLOUT_KINDS:  # forget them, waking each one's owner
                    for _, gone in self._engine.cache.replace_scope(resource.kind, None, []):
                        self._engine.child_event(resource.kind, "DELETED", gone)
                log.warning(
                    "Argo Rollouts is not installed (any more): InferenceDeployments fall back to Deployments"
                )
        if self._engine.queue is not None:
            self._engine.wake_all("InferenceDeployment")

    def stop(self) -> None:
        self.crd_informer.stop()
        for informer in self.informers:
            informer.stop()
