"""List-then-watch of our objects and our children, children with a server-side label selector.

Only children carrying `app.kubernetes.io/managed-by=mlops-operator` ever reach the operator: the
apiserver filters, so 10,000 unrelated pods cost nothing here. Objects are kept as plain JSON
(no client model classes), which keeps memory and CPU per event small. Secrets are watched as
metadata only (PartialObjectMetadata): their values never enter the operator's memory this way.

`start()` returns once the first list is in the cache ("synced"): reconciles that start afterwards
never mistake a not-yet-listed Job for a missing one. The first list reports every object as
`SYNC`; a later re-list (after a watch error, an expired resourceVersion, an apiserver restart)
reports what changed while the watch was down, as client-go's Replace does: `ADDED`, `MODIFIED`,
and `DELETED` (with the last copy held) for objects that vanished. Nothing is lost in a gap.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..k8s.rawapi import RawApi
from ..metrics import RELIST_CHANGES
from .cache import Cache, Obj

log = logging.getLogger(__name__)

EventCallback = Callable[[str, str, Obj], None]  # (kind, event type, object)


METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
METADATA_ONLY_WATCH = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"


@dataclass(frozen=True)
class WatchedResource:
    kind: str
    group_version_path: str  # "/api/v1" or "/apis/batch/v1"
    plural: str
    metadata_only: bool = False  # PartialObjectMetadata: labels, owners, versions; no spec or data
    # Whether the operator's own objects of this kind carry its managed-by label (children it makes),
    # so the apiserver can filter; False for what others make (tenants' Secrets, Kueue's Workloads).
    labelled: bool = True
    # What of each object is kept (controller-runtime's cache transform): for objects that are large
    # and mostly unread, such as Kueue Workloads and their pod templates.
    transform: Callable[[dict[str, Any]], dict[str, Any]] | None = field(default=None, compare=False)

    def path(self, namespace: str | None) -> str:
        if namespace is None:
            return f"{self.group_version_path}/{self.plural}"
        return f"{self.group_version_path}/namespaces/{namespace}/{self.plural}"


JOBS = WatchedResource("Job", "/apis/batch/v1", "jobs")
PODS = WatchedResource("Pod", "/api/v1", "pods")
DEPLOYMENTS = WatchedResource("Deployment", "/apis/apps/v1", "deployments")
SERVICES = WatchedResource("Service", "/api/v1", "services")
AUTOSCALERS = WatchedResource("HorizontalPodAutoscaler", "/apis/autoscaling/v2", "horizontalpodautoscalers")
# Only while Argo Rollouts' CRDs are installed (engine/rollouts.py follows their CRD).
ROLLOUTS = WatchedResource("Rollout", "/apis/argoproj.io/v1alpha1", "rollouts")
ANALYSIS_TEMPLATES = WatchedResource("AnalysisTemplate", "/apis/argoproj.io/v1alpha1", "analysistemplates")
# Tenants' Secrets, metadata only: a Secret a resource names wakes it when it appears or changes.
SECRETS = WatchedResource("Secret", "/api/v1", "secrets", metadata_only=True, labelled=False)
CRDS = WatchedResource(
    "CustomResourceDefinition", "/apis/apiextensions.k8s.io/v1", "customresourcedefinitions"
)


# Between failed lists: 1 s doubling to this, so a long outage is noticed within seconds of its end
# without a request storm meanwhile (one list per informer per 10 s).
MAX_RELIST_DELAY = 10.0


class _ExpiredError(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


class Informer:
    """Keeps `cache` in step with one resource in one namespace (or all) and reports each change."""

    def __init__(
        self,
        raw: RawApi,
        resource: WatchedResource,
        namespace: str | None,
        *,
        label_selector: str | None,
        cache: Cache,
        on_event: EventCallback,
        page_size: int = 500,
        watch_timeout: int = 300,
        field_selector: str | None = None,
    ) -> None:
        self._raw = raw
        self._resource = resource
        self._namespace = namespace
        self._selector = label_selector
        self._field_selector = field_selector
        self._listed_once = False
        self._cache = cache
        self._on_event = on_event
        self._page_size = page_size
        self._watch_timeout = watch_timeout
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"informer-{resource.plural}-{namespace or 'all'}", daemon=True
        )

    def start(self, sync_timeout: float = 60) -> None:
        self._thread.start()
        if not self._synced.wait(sync_timeout):
            raise TimeoutError(f"the first list of {self._resource.plural} did not finish in {sync_timeout}s")

    def stop(self) -> None:
        self._stopped.set()

    @property
    def resource(self) -> WatchedResource:
        return self._resource

    def _selectors(self) -> list[tuple[str, str]]:
        params = []
        if self._selector:
            params.append(("labelSelector", self._selector))
        if self._field_selector:
            params.append(("fieldSelector", self._field_selector))
        return params

    def _request(self, params: list[tuple[str, str]], *, stream: bool) -> Any:
        timeout = (10, self._watch_timeout + 30) if stream else 60
        accept = "application/json"
        if self._resource.metadata_only:
            accept = METADATA_ONLY_WATCH if stream else METADATA_ONLY
        return self._raw.open(
            "GET", self._resource.path(self._namespace), query=params, timeout=timeout, accept=accept
        )

    def _list(self) -> str:
        objects: list[dict[str, Any]] = []
        token = ""
        while True:
            params = [*self._selectors(), ("limit", str(self._page_size))]
            if token:
                params.append(("continue", token))
            body = json.loads(self._request(params, stream=False).data)
            objects += body.get("items") or []
            token = body.get("metadata", {}).get("continue") or ""
            if not token:
                break
        kind = self._resource.kind
        if self._resource.transform is not None:
            objects = [self._resource.transform(obj) for obj in objects]
        for obj in objects:  # list items carry no kind; the cache and handlers want it
            obj["kind"] = kind
        changes = self._cache.replace_scope(kind, self._namespace, objects)
        if not self._listed_once:
            self._listed_once = True
            for obj in objects:
                self._on_event(kind, "SYNC", obj)
        else:  # a re-list: what changed meanwhile, as the lost watch events would have said it
            if changes:
                log.info(
                    "re-listing %s found %d change(s) missed meanwhile", self._resource.plural, len(changes)
                )
            for event_type, changed in changes:
                RELIST_CHANGES.labels(kind=kind, type=event_type).inc()
                self._on_event(kind, event_type, changed)
        return str(body["metadata"]["resourceVersion"])

    def _lines(self, response: Any) -> Iterator[bytes]:
        buffer = b""
        for chunk in response.stream(65536, decode_content=True):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield line
            if self._stopped.is_set():
                return

    def _watch(self, version: str) -> str:
        params = [
            *self._selectors(),
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", version),
            ("timeoutSeconds", str(self._watch_timeout)),
        ]
        response = self._request(params, stream=True)
        try:
            for line in self._lines(response):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        raise _ExpiredError()
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                version = str(obj.get("metadata", {}).get("resourceVersion") or version)
                if kind == "BOOKMARK":
                    continue
                if self._resource.transform is not None:
                    obj = self._resource.transform(obj)
                obj["kind"] = self._resource.kind  # PartialObjectMetadata says its own kind
                meta = obj["metadata"]
                if kind == "DELETED":
                    self._cache.delete(self._resource.kind, str(meta.get("namespace")), meta["name"])
                else:
                    self._cache.upsert(self._resource.kind, obj)
                self._on_event(self._resource.kind, str(kind), obj)
        finally:
            response.release_conn()
        return version

    def _run(self) -> None:
        version: str | None = None
        failures = 0
        while not self._stopped.is_set():
            try:
                if version is None:
                    version = self._list()
                    self._synced.set()
                version = self._watch(version)
                failures = 0
            except _ExpiredError:
                version = None
            except Exception as error:  # network trouble, apiserver restart: back off and list again
                failures += 1
                delay = min(MAX_RELIST_DELAY, 0.5 * 2**failures)
                log.warning(
                    "watching %s failed (%s); listing again in %.1fs", self._resource.plural, error, delay
                )
                version = None
                self._stopped.wait(delay)
        log.debug("informer for %s stopped", self._resource.plural)


def wait_all(informers: list[Informer], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for informer in informers:
        informer.start(max(1.0, deadline - time.monotonic()))
