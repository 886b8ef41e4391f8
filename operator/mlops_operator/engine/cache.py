"""What the watches delivered: our objects and their children, in memory, indexed by owner UID.

Reconciles read from here instead of the apiserver, so a settled object costs no request. Children
are matched to their parent by the controller ownerReference's UID, never by a label a user can
copy onto their own pod. A write's response goes in too ("write-through"): the next reconcile sees
what it just did even before the watch event arrives. An older copy never replaces a newer one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

Obj = Mapping[str, Any]
ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


def controller_uid(obj: Obj) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("uid"))
    return None


def _newer_or_equal(new: Obj, old: Obj) -> bool:
    """Whether `new` is at least as recent as `old` (etcd resourceVersions are integers in practice)."""
    try:
        return int(new["metadata"]["resourceVersion"]) >= int(old["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):
        return True  # opaque versions: the latest delivery wins


def _slim(obj: Obj) -> Obj:
    """The object without metadata.managedFields: often half its size, and never read here."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or "managedFields" not in meta:
        return obj
    return {**obj, "metadata": {k: v for k, v in meta.items() if k != "managedFields"}}


class Cache:
    """Thread-safe store of objects by (kind, namespace, name), with owner and UID indexes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[ObjectKey, Obj] = {}
        self._by_uid: dict[str, ObjectKey] = {}
        self._by_owner: dict[tuple[str, str], set[ObjectKey]] = {}  # (kind, owner uid) -> children

    def upsert(self, kind: str, obj: Obj) -> bool:
        """Store `obj` unless a newer copy is already held; True when stored."""
        obj = _slim(obj)
        meta = obj.get("metadata", {})
        key = (kind, str(meta.get("namespace")), str(meta.get("name")))
        with self._lock:
            old = self._objects.get(key)
            if old is not None:
                if not _newer_or_equal(obj, old):
                    return False
                self._unindex(key, old)
            self._objects[key] = obj
            if uid := meta.get("uid"):
                self._by_uid[str(uid)] = key
            if owner := controller_uid(obj):
                self._by_owner.setdefault((kind, owner), set()).add(key)
            return True

    def delete(self, kind: str, namespace: str, name: str) -> Obj | None:
        key = (kind, namespace, name)
        with self._lock:
            old = self._objects.pop(key, None)
            if old is not None:
                self._unindex(key, old)
            return old

    def _unindex(self, key: ObjectKey, old: Obj) -> None:
        meta = old.get("metadata", {})
        if (uid := meta.get("uid")) and self._by_uid.get(str(uid)) == key:
            del self._by_uid[str(uid)]
        if owner := controller_uid(old):
            children = self._by_owner.get((key[0], owner))
            if children is not None:
                children.discard(key)
                if not children:
                    del self._by_owner[(key[0], owner)]

    def replace_scope(self, kind: str, namespace: str | None, objects: Sequence[Obj]) -> None:
        """After a (re)list: the listed objects are the truth for that kind in that namespace."""
        listed = {(kind, str(o["metadata"]["namespace"]), str(o["metadata"]["name"])) for o in objects}
        with self._lock:
            stale = [
                k
                for k in self._objects
                if k[0] == kind and (namespace is None or k[1] == namespace) and k not in listed
            ]
            for key in stale:
                self._unindex(key, self._objects.pop(key))
        for obj in objects:
            self.upsert(kind, obj)

    # -- reading ---------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def key_of_uid(self, uid: str) -> ObjectKey | None:
        with self._lock:
            return self._by_uid.get(uid)

    def owned(self, kind: str, owner_uid: str) -> list[Obj]:
        """Children of `kind` whose controller is the object with `owner_uid`."""
        with self._lock:
            keys = list(self._by_owner.get((kind, owner_uid), ()))
            return [self._objects[k] for k in keys if k in self._objects]

    def in_namespace(self, kind: str, namespace: str) -> Iterator[Obj]:
        with self._lock:
            found = [o for k, o in self._objects.items() if k[0] == kind and k[1] == namespace]
        yield from found

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for k in self._objects if k[0] == kind)
