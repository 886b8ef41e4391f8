"""Optional APIs followed while the operator runs: installed later, removed, installed again.

Each one is known by a CRD, watched by name (one object). While it is established, the resources it
brings are watched like every other child; when it goes, their informers stop, what the cache held
of them is dropped (waking their owners), and the kinds that depend on it are reconciled again.

- Argo Rollouts (`rollouts.argoproj.io`): Rollouts and AnalysisTemplates; `clients.rollouts` is True
  and new InferenceDeployments run as Rollouts. Without it they fall back to Deployments and say so,
  instead of failing applies with 404 and reporting Available.
- Kueue (`workloads.kueue.x-k8s.io`): the Workloads Kueue makes for our Jobs, read to say where a
  queued Job waits and why (its LocalQueue, ClusterQueue, pending reason, eviction). Kueue's own
  objects carry none of our labels, so they are listed unfiltered and slimmed to what is read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .cache import Obj
from .controller import Engine
from .informer import ANALYSIS_TEMPLATES, CRDS, ROLLOUTS, Informer, WatchedResource, wait_all

log = logging.getLogger(__name__)

ROLLOUT_CRD = "rollouts.argoproj.io"
ROLLOUT_KINDS: tuple[WatchedResource, ...] = (ROLLOUTS, ANALYSIS_TEMPLATES)
WORKLOAD_CRD = "workloads.kueue.x-k8s.io"

InformerFactory = Callable[[WatchedResource, str | None], Informer]


def established(crd: Obj) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def storage_version(crd: Obj) -> str | None:
    """The version the CRD stores (served too): the one a reader of any Kueue release can rely on."""
    versions = (crd.get("spec") or {}).get("versions") or []
    stored = [v for v in versions if v.get("storage") and v.get("served")]
    served = stored or [v for v in versions if v.get("served")]
    return str(served[0]["name"]) if served else None


def slim_workload(workload: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator reads of a Kueue Workload: its owner, queue, admission and conditions. Its
    pod sets (whole pod templates) are most of it and never read."""
    meta = workload.get("metadata") or {}
    spec = workload.get("spec") or {}
    status = workload.get("status") or {}
    kept_meta = ("name", "namespace", "uid", "resourceVersion", "creationTimestamp", "ownerReferences")
    return {
        "kind": "Workload",
        "metadata": {k: meta[k] for k in (*kept_meta, "deletionTimestamp") if k in meta},
        "spec": {k: spec[k] for k in ("queueName", "priority", "priorityClassName", "active") if k in spec},
        "status": {
            k: v
            for k, v in {
                "conditions": [
                    {k2: c.get(k2) for k2 in ("type", "status", "reason", "message", "lastTransitionTime")}
                    for c in status.get("conditions") or []
                ],
                "admission": {"clusterQueue": (status.get("admission") or {}).get("clusterQueue")}
                if status.get("admission")
                else None,
            }.items()
            if v
        },
    }


def kueue_workloads(crd: Obj) -> tuple[WatchedResource, ...]:
    version = storage_version(crd)
    if version is None:
        return ()
    # Kueue copies none of the Job's labels onto its Workload: listed unfiltered, and slimmed.
    return (
        WatchedResource(
            "Workload",
            f"/apis/kueue.x-k8s.io/{version}",
            "workloads",
            labelled=False,
            transform=slim_workload,
        ),
    )


class CrdDiscovery:
    """Starts and stops the informers of the resources an optional CRD brings, as it comes and goes."""

    def __init__(
        self,
        engine: Engine,
        scopes: list[str | None],
        make_informer: InformerFactory,
        *,
        crd: str,
        resources: Callable[[Obj], tuple[WatchedResource, ...]],
        changed: Callable[[bool], None],
        what: str,
    ) -> None:
        self._engine = engine
        self._scopes = scopes
        self._make = make_informer
        self._resources = resources
        self._changed = changed
        self._what = what
        self._watched: tuple[WatchedResource, ...] = ()
        self._informers: list[Informer] = []
        self._lock = threading.Lock()
        self.available = False
        self.crd_informer = Informer(
            engine.clients.raw,
            CRDS,
            None,
            label_selector=None,
            field_selector=f"metadata.name={crd}",
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
        resources = self._resources(crd) if available else ()
        with self._lock:
            if available == self.available and resources == self._watched:
                return
            self._stop_informers()
            if available and resources:
                self._watched = resources
                self._informers = [self._make(r, ns) for r in resources for ns in self._scopes]
                try:
                    wait_all(self._informers, timeout=60)
                except TimeoutError as error:  # the watches go on; reconciles start anyway
                    log.warning("%s informers not synced: %s", self._what, error)
                log.info("%s is installed", self._what)
            else:
                log.warning("%s is not installed (any more)", self._what)
            self.available = bool(available and resources)
            self._changed(self.available)

    def _stop_informers(self) -> None:
        for informer in self._informers:
            informer.stop()
        for resource in self._watched:  # forget them, waking each one's owner
            for _, gone in self._engine.cache.replace_scope(resource.kind, None, []):
                self._engine.child_event(resource.kind, "DELETED", gone)
        self._informers, self._watched = [], ()

    def stop(self) -> None:
        self.crd_informer.stop()
        for informer in self.informers:
            informer.stop()


def rollouts_discovery(engine: Engine, scopes: list[str | None], make: InformerFactory) -> CrdDiscovery:
    def changed(available: bool) -> None:
        engine.clients.rollouts = available
        log.info(
            "InferenceDeployments run as %s",
            "Argo Rollouts" if available else "Deployments (no Argo Rollouts)",
        )
        if engine.queue is not None:
            engine.wake_all("InferenceDeployment")

    return CrdDiscovery(
        engine,
        scopes,
        make,
        crd=ROLLOUT_CRD,
        resources=lambda _: ROLLOUT_KINDS,
        changed=changed,
        what="Argo Rollouts",
    )


def kueue_discovery(engine: Engine, scopes: list[str | None], make: InformerFactory) -> CrdDiscovery:
    def changed(_: bool) -> None:
        if engine.queue is not None:  # queued runs and stages say where they wait, or stop saying it
            engine.wake_all("TrainingRun")
            engine.wake_all("ModelVersion")

    return CrdDiscovery(
        engine, scopes, make, crd=WORKLOAD_CRD, resources=kueue_workloads, changed=changed, what="Kueue"
    )
