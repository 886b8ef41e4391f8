"""kopf wiring only: what feeds the engine, and when it starts and stops.

- Our four kinds come from kopf's watch-streams as raw events (no per-object progress annotations,
  no finalizers): each event stores the object in the engine's cache and queues it.
- Our children (Jobs, Pods) come from the engine's own informers, filtered by label on the server,
  started and synced before kopf lists our kinds, so the first reconcile after a restart already
  sees every child.
- The engine's workers reconcile from the cache and wake an object again only when it said
  something is due.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
import prometheus_client

from .api.v1alpha1 import GROUP, KINDS, VERSION, KindInfo
from .engine.controller import Engine
from .engine.informer import DEPLOYMENTS, JOBS, PODS, ROLLOUTS, Informer, wait_all
from .handlers.context import Clients
from .k8s.naming import MANAGED_BY_SELECTOR
from .settings import OperatorConfig, configure_kopf

log = logging.getLogger(__name__)


class Runtime:
    """What the wiring shares in one operator process; filled in by the startup handler."""

    engine: Engine | None = None
    informers: list[Informer] = []


RUNTIME = Runtime()


def _register(info: KindInfo) -> None:
    async def changed(event: kopf.RawEvent, **_: Any) -> None:
        # Cheap and non-blocking: store and queue; the engine's workers do the reconciling.
        if RUNTIME.engine is not None:
            RUNTIME.engine.object_event(info, event.get("type"), event["object"])

    changed.__name__ = changed.__qualname__ = f"{info.singular}_changed"
    kopf.on.event(GROUP, VERSION, info.plural, id="cache")(changed)


for _info in KINDS:
    _register(_info)


def _load_clients() -> Clients:
    from kubernetes import client, config  # noqa: PLC0415

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    # Worker threads and informers share one client: give it a connection per thread.
    configuration.connection_pool_maxsize = 32
    return Clients(api=client.ApiClient(configuration))


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = OperatorConfig()
    configure_kopf(settings, config)
    engine = Engine(config, _load_clients())
    scopes: list[str | None] = list(config.namespaces) or [None]
    # InferenceDeployments run as Argo Rollouts where its CRDs are installed, as Deployments elsewhere.
    engine.clients.rollouts = engine.clients.raw.has_resource(ROLLOUTS.group_version_path, ROLLOUTS.plural)
    children = (JOBS, PODS, DEPLOYMENTS, *((ROLLOUTS,) if engine.clients.rollouts else ()))
    RUNTIME.informers = [
        Informer(
            engine.clients.raw,
            resource,
            namespace,
            label_selector=MANAGED_BY_SELECTOR,
            cache=engine.cache,
            on_event=engine.child_event,
        )
        for resource in children
        for namespace in scopes
    ]
    wait_all(RUNTIME.informers, timeout=120)
    if config.peering_name:
        _follow_peering(engine, config.peering_name, cluster_wide=not config.namespaces)
    engine.start()
    RUNTIME.engine = engine
    if config.metrics_port:
        prometheus_client.start_http_server(config.metrics_port)
    log.info(
        "mlops-operator started (namespaces=%s, workers=%d)",
        config.namespaces or "cluster-wide",
        config.workers,
    )


def _follow_peering(engine: Engine, name: str, *, cluster_wide: bool) -> None:
    """Work only while kopf lets this replica work.

    A standby replica's watch-streams are paused by kopf, but the engine's own informers and due-time
    wake-ups are not. kopf stops every daemon while the operator is paused and starts them again when
    it resumes, so a daemon on our own peering object tells the engine's queue exactly when to hand
    out work. The queue starts paused: nothing is reconciled before kopf says this replica leads.
    """
    engine.queue.pause(True)
    running: set[object] = set()

    async def leading(stopped: kopf.DaemonStopped, uid: str | None, **_: Any) -> None:
        running.add(uid)
        engine.queue.pause(False)
        try:
            await stopped.wait()
        finally:
            running.discard(uid)
            if not running:
                engine.queue.pause(True)

    plural = "clusterkopfpeerings" if cluster_wide else "kopfpeerings"
    kopf.daemon(
        "kopf.dev",
        "v1",
        plural,
        id="leading",
        when=lambda body, **_: body.get("metadata", {}).get("name") == name,
        cancellation_timeout=1,
    )(leading)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    for informer in RUNTIME.informers:
        informer.stop()
    if RUNTIME.engine is not None:
        RUNTIME.engine.stop()


@kopf.on.probe(id="watching")
def watching_probe(**_: Any) -> bool:
    return RUNTIME.engine is not None
