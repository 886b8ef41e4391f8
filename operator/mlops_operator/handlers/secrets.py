"""Reading a tenant's Secret: the only credentials the operator acts with in a namespace.

Values stay in memory for the one request they are read for; never in status, events or logs.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from kubernetes.client.exceptions import ApiException

from .context import ReconcileContext


class CredentialsUnavailableError(Exception):
    """The Secret or one of its keys is missing, empty or unreadable; the message says which."""


def read_secret_values(ctx: ReconcileContext, name: str, keys: Sequence[str]) -> dict[str, str]:
    """The named keys of Secret `name` in the object's namespace, decoded and stripped."""
    try:
        secret = ctx.require_clients().core.read_namespaced_secret(name, ctx.namespace)
    except ApiException as error:
        if error.status == 404:
            raise CredentialsUnavailableError(
                f"Secret {name} not found in namespace {ctx.namespace}"
            ) from None
        raise CredentialsUnavailableError(f"cannot read Secret {name}: HTTP {error.status}") from None
    data = secret.data or {}
    values: dict[str, str] = {}
    for key in keys:
        if key not in data:
            raise CredentialsUnavailableError(f"Secret {name} has no key {key}")
        decoded = base64.b64decode(data[key]).decode().strip()
        if not decoded:  # an empty key must not become "no credentials" (the SDK's own identity)
            raise CredentialsUnavailableError(f"Secret {name} has an empty {key}")
        values[key] = decoded
    return values
