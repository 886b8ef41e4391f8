"""List-then-watch of our children (Jobs, Pods) with a server-side label selector.

Only objects carrying `app.kubernetes.io/managed-by=mlops-operator` ever reach the operator: the
apiserver filters, so 10,000 unrelated pods cost nothing here. Objects are kept as plain JSON
(no client model classes), which keeps memory and CPU per event small.

`start()` returns once the first list is in the cache ("synced"): reconciles that start afterwards
never mistake a not-yet-listed Job for a missing one.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..k8s.rawapi import RawApi
from .cache import Cache, Obj

log = logging.getLogger(__name__)

EventCallback = Callable[[str, str, Obj], None]  # (kind, event type, object)


@dataclass(frozen=True)
class WatchedResource:
    kind: str
    group_version_path: str  # "/api/v1" or "/apis/batch/v1"
    plural: str

    def path(self, namespace: str | None) -> str:
        if namespace is None:
            return f"{self.group_version_path}/{self.plural}"
        return f"{self.group_version_path}/namespaces/{namespace}/{self.plural}"


JOBS = WatchedResource("Job", "/apis/batch/v1", "jobs")
PODS = WatchedResource("Pod", "/api/v1", "pods")
DEPLOYMENTS = WatchedResource("Deployment", "/apis/apps/v1", "deployments")
# Only where Argo Rollouts' CRDs are installed (main.py asks discovery first).
ROLLOUTS = WatchedResource("Rollout", "/apis/argoproj.io/v1alpha1", "rollouts")


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
        label_selector: str,
        cache: Cache,
        on_event: EventCallback,
        page_size: int = 500,
        watch_timeout: int = 300,
    ) -> None:
        self._raw = raw
        self._resource = resource
        self._namespace = namespace
        self._selector = label_selector
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

    def _request(self, params: list[tuple[str, str]], *, stream: bool) -> Any:
        timeout = (10, self._watch_timeout + 30) if stream else 60
        return self._raw.open("GET", self._resource.path(self._namespace), query=params, timeout=timeout)

    def _list(self) -> str:
        objects: list[dict[str, Any]] = []
        token = ""
        while True:
            params = [("labelSelector", self._selector), ("limit", str(self._page_size))]
            if token:
                params.append(("continue", token))
            body = json.loads(self._request(params, stream=False).data)
            objects += body.get("items") or []
            token = body.get("metadata", {}).get("continue") or ""
            if not token:
                break
        kind = self._resource.kind
        for obj in objects:  # list items carry no kind; the cache and handlers want it
            obj["kind"] = kind
        self._cache.replace_scope(kind, self._namespace, objects)
        for obj in objects:
            self._on_event(kind, "SYNC", obj)
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
            ("labelSelector", self._selector),
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
                obj.setdefault("kind", self._resource.kind)
                meta = obj["metadata"]
                if kind == "DELETED":
                    self._cache.delete(self._resource.kind, meta["namespace"], meta["name"])
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
                delay = min(30.0, 0.5 * 2**failures)
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
