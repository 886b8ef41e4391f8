"""A tenant's model registry, opened the one way every kind opens it: the endpoint through the
operator's allow-list, the credential from the tenant's own Secret (never the operator's identity).
ModelVersion registers and promotes through it; InferenceDeployment moves its serving aliases."""

from __future__ import annotations

from ..api.v1alpha1 import ModelVersionSpec
from ..integrations.endpoints import EndpointNotAllowedError, require_allowed
from ..integrations.registry import (
    ModelRegistry,
    RegistryBusyError,
    RegistryRejectedError,
    RegistryTarget,
    RegistryUnavailableError,
)
from .context import ReconcileContext
from .secrets import CredentialsUnavailableError, read_secret_values


class RegistryProblemError(Exception):
    """The registry cannot be asked at all: an endpoint the allow-list refuses, a missing Secret."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


REGISTRY_ERRORS = (RegistryProblemError, RegistryUnavailableError, RegistryRejectedError)


def registered_model_name(spec: ModelVersionSpec) -> str:
    assert spec.registry is not None
    return spec.registry.collection or spec.model_name


def open_registry(spec: ModelVersionSpec, ctx: ReconcileContext) -> ModelRegistry:
    """The client of the registry a ModelVersion's `spec.registry` names, with the tenant's
    credential (a Secret of `ctx.namespace`, the ModelVersion's namespace)."""
    registry = spec.registry
    assert registry is not None
    try:
        require_allowed(
            registry.tracking_uri,
            ctx.config.registry_endpoint_allowlist,
            setting="MLOPS_REGISTRY_ENDPOINT_ALLOWLIST",
        )
    except EndpointNotAllowedError as error:
        raise RegistryProblemError("EndpointNotAllowed", str(error)) from None
    credential = None
    if registry.credentials_secret_ref:
        ref = registry.credentials_secret_ref
        try:
            credential = read_secret_values(ctx, ref.name, [ref.key])[ref.key]
        except CredentialsUnavailableError as error:
            raise RegistryProblemError("CredentialsUnavailable", str(error)) from None
    target = RegistryTarget(
        provider=registry.provider,
        model_name=registered_model_name(spec),
        project=registry.project,
        entity=registry.entity,
        tracking_uri=registry.tracking_uri,
        credential=credential,
    )
    return ctx.require_clients().registry(target, ctx.config.registry_timeout_seconds)


def registry_problem(error: Exception, doing: str) -> tuple[str, str]:
    """(Ready reason, message) of a registry error while `doing` something."""
    if isinstance(error, RegistryProblemError):
        return error.reason, f"{doing}: {error.message}"
    if isinstance(error, RegistryBusyError):  # another registration runs: no outage, no warning
        return "RegistryBusy", f"{doing}: {error}"
    if isinstance(error, RegistryUnavailableError):
        return "RegistryUnavailable", f"{doing}: the registry is unavailable ({error}); retrying"
    return "RegistryRejected", f"{doing}: the registry refused the request ({error})"
