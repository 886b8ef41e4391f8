"""Whether a child the operator applies still holds what the operator wants (pure: plain data).

Every child a builder emits carries `mlops.dev/desired-hash`: a hash of everything the operator
applies in it (the annotation itself left out). An observed child is *drifted*, and must be applied
again, when

- it is missing (`observed is None`);
- its annotation differs from the desired one: the operator now wants something else, or someone
  edited or removed the annotation;
- a field the operator sets no longer holds the operator's value: a label or annotation removed or
  changed, a port edited, a spec field changed by hand. Fields the operator does not set are not
  compared (the apiserver's defaults, `clusterIP`, `status`, other controllers' and tools' labels and
  annotations, Argo Rollouts' `managed-by-rollouts` annotation, `kubectl`'s last-applied
  configuration): server-side apply leaves them to their owners, so their values are no drift;
- a map the apiserver treats as one value (`x-kubernetes-map-type: atomic`) has a key the operator did
  not set: a Service's `spec.selector`, whose every key narrows the pods it sends traffic to. A
  `rollouts-pod-template-hash` key there, written by Argo Rollouts into a Service a Rollout names, pins
  the Service to one ReplicaSet's pods; the operator's Rollouts name no Service (builders/serving.py),
  so on an operator-owned Service that key is drift too, and applying the Service again (forced: the
  atomic map is replaced whole) removes it.

Quantities compare by value ("0.5" and "500m" are the same CPU: the apiserver canonicalizes the
quantities of built-in kinds), everything else literally.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

DESIRED_HASH_ANNOTATION = "mlops.dev/desired-hash"

# Paths (from the object's root) of maps the apiserver keeps as one value: every key counts.
ATOMIC_MAPS: Mapping[str, tuple[tuple[str, ...], ...]] = {
    "Service": (("spec", "selector"),),
}

_QUANTITY = re.compile(
    r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(?:([eE][+-]?[0-9]+)|(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]))?$"
)
_SUFFIX = {
    "": Decimal(1),
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
}


def desired_hash(manifest: Mapping[str, Any]) -> str:
    """Hash of everything `manifest` sets except the desired-hash annotation itself."""
    content = json.loads(json.dumps(manifest))
    annotations = (content.get("metadata") or {}).get("annotations")
    if isinstance(annotations, dict):
        annotations.pop(DESIRED_HASH_ANNOTATION, None)
        if not annotations:
            del content["metadata"]["annotations"]
    encoded = json.dumps(content, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()[:16]


def stamped(manifest: dict[str, Any]) -> dict[str, Any]:
    """`manifest` with its desired-hash annotation set (in place; returned for chaining)."""
    digest = desired_hash(manifest)
    manifest.setdefault("metadata", {}).setdefault("annotations", {})[DESIRED_HASH_ANNOTATION] = digest
    return manifest


def observed_hash(observed: Mapping[str, Any] | None) -> str | None:
    if observed is None:
        return None
    value = ((observed.get("metadata") or {}).get("annotations") or {}).get(DESIRED_HASH_ANNOTATION)
    return str(value) if value is not None else None


def _quantity(value: str) -> Decimal | None:
    match = _QUANTITY.match(value)
    if not match:
        return None
    number, exponent, suffix = match.groups()
    try:
        result = Decimal(number) * _SUFFIX[suffix or ""]
        return result * Decimal(f"1{exponent}") if exponent else result
    except InvalidOperation:
        return None


def _same_scalar(want: Any, have: Any) -> bool:
    if want == have and type(want) is type(have):
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return False
    if isinstance(want, int | float) and isinstance(have, int | float):
        return float(want) == float(have)
    if isinstance(want, str) and isinstance(have, str | int | float):
        a, b = _quantity(want), _quantity(str(have))
        return a is not None and a == b
    return False


def _list_key(desired: list[Any], path: tuple[str, ...]) -> str | None:
    """The field that identifies the items of an associative list (server-side apply merges these
    item by item: ownerReferences by uid; containers, env, ports, volumes by name), or None for a
    list compared whole."""
    key = "uid" if path[-1:] == ("ownerReferences",) else "name"
    if not desired or not all(isinstance(item, Mapping) and key in item for item in desired):
        return None
    names = [item[key] for item in desired]
    return key if len(set(names)) == len(names) else None


def differences(desired: Any, observed: Any, *, kind: str = "", path: tuple[str, ...] = ()) -> list[str]:
    """Paths (dotted) of the fields `desired` sets that `observed` does not hold, and of keys
    `observed` adds to an atomic map."""
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return [".".join(path) or "."]
        found: list[str] = []
        for key, want in desired.items():
            if not path and key in ("apiVersion", "kind"):
                continue  # they name the object; items of a list response carry neither
            if key not in observed:
                found.append(".".join((*path, key)))
            else:
                found += differences(want, observed[key], kind=kind, path=(*path, key))
        if path in ATOMIC_MAPS.get(kind, ()):
            found += [".".join((*path, key)) for key in observed if key not in desired]
        return found
    if isinstance(desired, list):
        if not isinstance(observed, list):
            return [".".join(path)]
        key = _list_key(desired, path)
        if key is not None:  # an associative list: other managers' entries stay, and are no drift
            have_by_key = {item.get(key): item for item in observed if isinstance(item, Mapping)}
            found = []
            for want in desired:
                name = str(want[key])
                if name not in have_by_key:
                    found.append(".".join((*path, name)))
                else:
                    found += differences(want, have_by_key[name], kind=kind, path=(*path, name))
            return found
        if len(observed) != len(desired):
            return [".".join(path)]
        found = []
        for index, (want, have) in enumerate(zip(desired, observed, strict=True)):
            found += differences(want, have, kind=kind, path=(*path, str(index)))
        return found
    return [] if _same_scalar(desired, observed) else [".".join(path)]


def drifted(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether `observed` (the child as read back, or None when missing) must be applied again to
    hold `desired` (a builder's output, stamped)."""
    if observed is None:
        return True
    if observed_hash(observed) != observed_hash(desired):
        return True
    return bool(differences(desired, observed, kind=str(desired.get("kind", ""))))
