"""kopf wiring only: what feeds the engine, and when it starts and stops.

- Our children (Jobs, Pods, Services, Deployments, autoscalers; Rollouts and AnalysisTemplates while
  Argo Rollouts is installed) come from the engine's own informers, filtered by label on the server,
  started and synced before our kinds are listed, so the first reconcile after a restart already
  sees every child. Secrets are watched as metadata only (a named Secret appearing wakes its user).
- Our four kinds come from informers of the same engine (not kopf's watch-streams): a re-list after
  a cut watch reports deletions and changes missed meanwhile, which kopf's re-list does not.
- The engine's workers reconcile from the cache and wake an object again only when it said
  something is due. kopf runs the process: startup and cleanup, probes, and peering.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf
import prometheus_client

from .api.v1alpha1 import GROUP, KINDS, VERSION, KindInfo
from .engine.controller import Engine
from .engine.discovery import CrdDiscovery, kueue_discovery, rollouts_discovery
from .engine.informer import (
    AUTOSCALERS,
    DEPLOYMENTS,
    JOBS,
    PODS,
    SECRETS,
    SERVICES,
    Informer,
    WatchedResource,
    wait_all,
)
from .handlers.context import Clients
from .k8s.naming import MANAGED_BY_SELECTOR
from .settings import OperatorConfig, configure_kopf

log = logging.getLogger(__name__)


class Runtime:
    """What the wiring shares in one operator process; filled in by the startup handler."""

    engine: Engine | None = None
    informers: list[Informer] = []
    discovery: list[CrdDiscovery] = []


RUNTIME = Runtime()


def _our_kind(info: KindInfo) -> WatchedResource:
    return WatchedResource(info.kind, f"/apis/{GROUP}/{VERSION}", info.plural)


def _object_events(engine: Engine, info: KindInfo) -> Any:
    def changed(kind: str, event_type: str, body: Any) -> None:
        engine.object_event(info, event_type, body)

    return changed


def _load_clients() -> Clients:
    from kubernetes import client, config  # noqa: PLC0415
    from kubernetes.utils.keepalive import tcp_keepalive_socket_options  # noqa: PLC0415

    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except config.ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    configuration = client.Configuration.get_default_copy()
    # Worker threads and informers share one client: give it a connection per thread.
    configuration.connection_pool_maxsize = 32
    # A watch through a NAT, proxy or load balancer that dropped it silently would wait for data that
    # never comes: TCP keepalive finds the dead peer in about 30 s, and the informer re-lists.
    configuration.socket_options = tcp_keepalive_socket_options(idle=15, interval=5, count=3)
    return Clients(api=client.ApiClient(configuration))


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    config = OperatorConfig()
    configure_kopf(settings, config)
    engine = Engine(config, _load_clients())
    scopes: list[str | None] = list(config.namespaces) or [None]
    # InferenceDeployments run as Argo Rollouts where its CRDs are installed, as Deployments elsewhere.
    children = [JOBS, PODS, DEPLOYMENTS, SERVICES, AUTOSCALERS]
    if config.watch_secrets:
        children.append(SECRETS)

    def informer(resource: WatchedResource, namespace: str | None) -> Informer:
        return Informer(
            engine.clients.raw,
            resource,
            namespace,
            label_selector=MANAGED_BY_SELECTOR if resource.labelled else None,
            cache=engine.cache,
            on_event=engine.child_event,
            watch_timeout=config.watch_timeout_seconds,
        )

    RUNTIME.informers = [informer(resource, namespace) for resource in children for namespace in scopes]
    wait_all(RUNTIME.informers, timeout=120)
    # InferenceDeployments run as Argo Rollouts while its CRDs are installed, as Deployments otherwise.
    # Kueue's Workloads, while Kueue is installed: where a queued Job waits, and why.
    RUNTIME.discovery = [
        rollouts_discovery(engine, scopes, informer),
        kueue_discovery(engine, scopes, informer),
    ]
    wait_all([d.crd_informer for d in RUNTIME.discovery], timeout=120)
    # Our kinds last: their first list queues every object, whose reconcile then sees all children.
    ours = [
        Informer(
            engine.clients.raw,
            _our_kind(info),
            namespace,
            label_selector=None,
            cache=engine.cache,
            on_event=_object_events(engine, info),
            watch_timeout=config.watch_timeout_seconds,
        )
        for info in KINDS
        for namespace in scopes
    ]
    wait_all(ours, timeout=120)
    RUNTIME.informers += ours
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
        log.info("leading: reconciles run")
        try:
            await stopped.wait()
        finally:
            running.discard(uid)
            if not running:
                engine.queue.pause(True)
                log.info("standing by: reconciles paused")

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
    for discovery in RUNTIME.discovery:
        discovery.stop()
    if RUNTIME.engine is not None:
        RUNTIME.engine.stop()


@kopf.on.probe(id="watching")
def watching_probe(**_: Any) -> bool:
    return RUNTIME.engine is not None
