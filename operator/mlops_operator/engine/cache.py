"""What the watches delivered: our objects and their children, in memory, indexed by owner UID.

Reconciles read from here instead of the apiserver, so a settled object costs no request. Children
are matched to their parent by the controller ownerReference's UID within the parent's own
namespace, never by a label a user can copy onto their own pod: an ownerReference is only a claim,
and one from another namespace (Kubernetes' garbage collector ignores those too) is a forgery that
must not reach another tenant's reconcile. A write's response goes in too ("write-through"): the
next reconcile sees what it just did even before the watch event arrives. An older copy never
replaces a newer one.
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


def _version(obj: Obj) -> str | None:
    version = obj.get("metadata", {}).get("resourceVersion")
    return None if version is None else str(version)


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
        # (kind, namespace, owner uid) -> children in that namespace
        self._by_owner: dict[tuple[str, str, str], set[ObjectKey]] = {}

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
                self._by_owner.setdefault((kind, key[1], owner), set()).add(key)
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
            index = (key[0], key[1], owner)
            children = self._by_owner.get(index)
            if children is not None:
                children.discard(key)
                if not children:
                    del self._by_owner[index]

    def replace_scope(
        self, kind: str, namespace: str | None, objects: Sequence[Obj]
    ) -> list[tuple[str, Obj]]:
        """After a (re)list: the listed objects are the truth for that kind in that namespace.

        Returns what the list changed, as watch events would have said it (client-go's Replace):
        ("ADDED", obj), ("MODIFIED", obj) for a new resourceVersion, ("DELETED", last copy) for an
        object the list no longer has. Unchanged objects are not returned: they wake nobody.
        """
        listed = {(kind, str(o["metadata"].get("namespace")), str(o["metadata"]["name"])): o for o in objects}
        changes: list[tuple[str, Obj]] = []
        with self._lock:
            stale = [
                k
                for k in self._objects
                if k[0] == kind and (namespace is None or k[1] == namespace) and k not in listed
            ]
            for key in stale:
                old = self._objects.pop(key)
                self._unindex(key, old)
                changes.append(("DELETED", old))
            before = {key: self._objects.get(key) for key in listed}
        for key, obj in listed.items():
            held = before[key]
            if held is None:
                if self.upsert(kind, obj):
                    changes.append(("ADDED", self.get(*key) or obj))
            elif _version(held) != _version(obj) and self.upsert(kind, obj):
                changes.append(("MODIFIED", self.get(*key) or obj))
        return changes

    # -- reading ---------------------------------------------------------------------------------

    def get(self, kind: str, namespace: str, name: str) -> Obj | None:
        with self._lock:
            return self._objects.get((kind, namespace, name))

    def key_of_uid(self, uid: str) -> ObjectKey | None:
        with self._lock:
            return self._by_uid.get(uid)

    def owned(self, kind: str, owner_uid: str) -> list[Obj]:
        """Children of `kind` whose controller is the object with `owner_uid`, in its namespace.

        A child in another namespace claiming that owner is never returned (see `foreign_claim`).
        """
        with self._lock:
            owner = self._by_uid.get(owner_uid)
            if owner is None:
                return []
            keys = list(self._by_owner.get((kind, owner[1], owner_uid), ()))
            return [self._objects[k] for k in keys if k in self._objects]

    def owner_of(self, obj: Obj) -> ObjectKey | None:
        """The key of `obj`'s controller, when that controller is held here and in `obj`'s namespace."""
        uid = controller_uid(obj)
        if uid is None:
            return None
        with self._lock:
            owner = self._by_uid.get(uid)
        if owner is None or owner[1] != str(obj.get("metadata", {}).get("namespace")):
            return None
        return owner

    def foreign_claim(self, obj: Obj) -> bool:
        """Whether `obj` names as its controller an object held here in another namespace."""
        uid = controller_uid(obj)
        if uid is None:
            return False
        with self._lock:
            owner = self._by_uid.get(uid)
        return owner is not None and owner[1] != str(obj.get("metadata", {}).get("namespace"))

    def keys(self, kind: str) -> list[ObjectKey]:
        with self._lock:
            return [k for k in self._objects if k[0] == kind]

    def in_namespace(self, kind: str, namespace: str) -> Iterator[Obj]:
        with self._lock:
            found = [o for k, o in self._objects.items() if k[0] == kind and k[1] == namespace]
        yield from found

    def count(self, kind: str) -> int:
        with self._lock:
            return sum(1 for k in self._objects if k[0] == kind)
