"""Reads a reconcile makes besides the cache: the rare read-through of an object or Job that the
watches have not delivered yet (just made, or a restart's first look), so it is never reported as
missing while it exists."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException

from ..api.v1alpha1 import GROUP, VERSION
from ..engine.cache import controller_uid
from ..k8s.rawapi import resource_path
from .context import ReconcileContext


def read_object(ctx: ReconcileContext, kind: str, plural: str, name: str) -> Mapping[str, Any] | None:
    """One of our objects in the reconciled object's namespace: from the cache, else read through."""
    cached = ctx.cache.get(kind, ctx.namespace, name)
    if cached is not None:
        return cached
    try:
        obj: Mapping[str, Any] = ctx.require_clients().custom.get_namespaced_custom_object(
            GROUP, VERSION, ctx.namespace, plural, name
        )
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return obj


def read_through_job(ctx: ReconcileContext, name: str) -> Mapping[str, Any] | None:
    """A Job the status says was made but the cache lacks (a watch event still on its way); None when
    it does not exist or another object owns a Job of that name."""
    try:
        obj = ctx.require_clients().raw.request("GET", resource_path("Job", ctx.namespace, name))
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    if controller_uid(obj) != ctx.uid:
        return None  # same name, not ours
    ctx.cache.upsert("Job", obj)
    return obj
