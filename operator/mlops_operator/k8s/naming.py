"""Deterministic names, labels and owner references for the children of our resources."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from ..api.v1alpha1 import API_VERSION, GROUP

MAX_NAME = 63  # DNS-1123 label: Services, pod hostnames and Job-derived names need it.
MANAGED_BY = "mlops-operator"
MANAGED_BY_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"  # how the informers find children
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def dns_label(parent: str, suffix: str, *, max_length: int = MAX_NAME, dns1035: bool = False) -> str:
    """`<parent>-<suffix>` as a valid DNS label, for any valid object name as `parent`.

    Object names may be DNS subdomains (dots, 253 characters, a leading digit); many child names
    must be DNS-1123 labels (pod hostnames, Job names of Indexed Jobs) or DNS-1035 labels (Services:
    a letter first). Whenever the parent's name cannot be kept as it is (dots, length, a leading
    digit where a letter is needed), a hash of the whole name keeps two parents apart. The suffix
    always stays at the end, so `<name>-a2` still reads as attempt 2.
    """
    base = parent.replace(".", "-")
    if dns1035 and not base[:1].isalpha():
        base = f"x{base}"
    full = f"{base}-{suffix}"
    if base == parent and len(full) <= max_length:
        return full
    tail = f"-{_digest(parent)}-{suffix}"
    return f"{base[: max_length - len(tail)].rstrip('-')}{tail}"


def label_value(value: str) -> str:
    """`value` as a label value (at most 63 characters, alphanumeric at both ends); a hash keeps
    truncated values apart."""
    if len(value) <= MAX_NAME and _LABEL_VALUE.match(value):
        return value
    cleaned = re.sub(r"[^-A-Za-z0-9_.]", "-", value)
    return f"{cleaned[:54].strip('-_.')}-{_digest(value)}".lstrip("-_.")


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


def uid_label(kind: str) -> str:
    """The label that names the UID of the object of `kind` a child belongs to, e.g.
    `mlops.dev/inferencedeployment-uid`: it survives renames and selects exactly one object's pods."""
    return f"{GROUP}/{kind.lower()}-uid"


def common_labels(kind: str, name: str, component: str | None = None) -> dict[str, str]:
    """Labels every child carries: the app.kubernetes.io set plus `mlops.dev/<kind>: <name>`."""
    labels = {
        "app.kubernetes.io/name": kind.lower(),
        "app.kubernetes.io/instance": label_value(name),
        "app.kubernetes.io/managed-by": MANAGED_BY,
        "app.kubernetes.io/part-of": "mlops",
        f"{GROUP}/{kind.lower()}": label_value(name),
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
