"""Deterministic names, labels and owner references for the children of our resources."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from ..api.v1alpha1 import API_VERSION, GROUP

MAX_NAME = 63  # DNS-1123 label: Services, pod hostnames and Job-derived names need it.
MANAGED_BY = "mlops-operator"


def child_name(parent: str, *parts: str, max_length: int = MAX_NAME) -> str:
    """`<parent>-<part>...`, shortened deterministically with a hash suffix when too long.

    The same inputs always give the same name, so a reconcile that runs twice finds its child
    instead of creating a second one.
    """
    full = "-".join([parent, *[p for p in parts if p]])
    if len(full) <= max_length:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:8]
    return f"{full[: max_length - 9].rstrip('-.')}-{digest}"


def common_labels(kind: str, name: str, component: str | None = None) -> dict[str, str]:
    """Labels every child carries: the app.kubernetes.io set plus `mlops.dev/<kind>: <name>`."""
    labels = {
        "app.kubernetes.io/name": kind.lower(),
        "app.kubernetes.io/instance": name[:MAX_NAME],
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "mlops",
        f"{GROUP}/{kind.lower()}": name[:MAX_NAME],
    }
    if component:
        labels["app.kubernetes.io/component"] = component
    return labels


def owner_reference(owner: Mapping[str, Any], *, controller: bool = True) -> dict[str, Any]:
    """An ownerReference to one of our objects, so Kubernetes garbage-collects its children."""
    meta = owner["metadata"]
    return {
        "apiVersion": owner.get("apiVersion", API_VERSION),
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }
