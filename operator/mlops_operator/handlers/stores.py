"""A tenant's S3 store, opened the one way every kind opens it: the endpoint through the operator's
allow-list, the credentials from the tenant's own Secret (never the operator's identity)."""

from __future__ import annotations

from ..api.v1alpha1.dataset import DatasetSource
from ..api.v1alpha1.dataset import S3Credentials as CredentialsRef
from ..integrations.endpoints import require_allowed
from ..integrations.s3 import ObjectStore, S3Config, S3Credentials
from .context import ReconcileContext
from .secrets import read_secret_values


def read_credentials(ctx: ReconcileContext, ref: CredentialsRef) -> S3Credentials:
    """Read the referenced Secret; its values stay in memory, never in status, events or logs."""
    keys = [ref.access_key_id_key, ref.secret_access_key_key]
    if ref.session_token_key:
        keys.append(ref.session_token_key)
    values = read_secret_values(ctx, ref.name, keys)
    token = values[ref.session_token_key] if ref.session_token_key else None
    return S3Credentials(values[ref.access_key_id_key], values[ref.secret_access_key_key], token)


def open_store(ctx: ReconcileContext, source: DatasetSource) -> ObjectStore:
    """The store `source` names, with its credentials.

    Raises EndpointNotAllowedError (the allow-list refuses the endpoint), CredentialsUnavailableError
    (the Secret or a key is missing) or ValueError (botocore refuses the endpoint).
    """
    require_allowed(
        source.endpoint_url, ctx.config.s3_endpoint_allowlist, setting="MLOPS_S3_ENDPOINT_ALLOWLIST"
    )
    creds = read_credentials(ctx, source.credentials_secret_ref) if source.credentials_secret_ref else None
    return ctx.require_clients().object_store(S3Config(source.endpoint_url, source.region, creds))
