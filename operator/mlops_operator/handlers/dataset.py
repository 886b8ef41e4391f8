"""Dataset reconcile: list the S3 prefix, fingerprint it, check the contract, record the manifest."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ..api.v1alpha1 import DatasetSpec
from ..api.v1alpha1.dataset import S3Credentials as CredentialsRef
from ..builders.dataset import (
    Manifest,
    ManifestFormatError,
    contract_violations,
    manifest_from_jsonl,
    manifest_from_listing,
    manifest_key,
    missing_from_listing,
)
from ..integrations.s3 import (
    ObjectStore,
    S3Config,
    S3Credentials,
    S3Location,
    S3UnavailableError,
    split_object_uri,
)
from ..k8s.conditions import ConditionUpdate, find_condition
from ..k8s.events import Event
from ..timeutil import from_rfc3339, parse_duration, to_rfc3339
from .base import READY, Outcome
from .context import ReconcileContext

# While the source is unavailable, retry after half the time it has been failing, within these bounds:
# quick after a blip, gentle on a long outage, with no retry counter to keep in status.
RETRY_MIN = timedelta(seconds=15)
RETRY_MAX = timedelta(minutes=5)


class CredentialsUnavailableError(Exception):
    pass


def read_credentials(ctx: ReconcileContext, ref: CredentialsRef) -> S3Credentials:
    """Read the referenced Secret; its values stay in memory, never in status, events or logs."""
    from kubernetes.client.exceptions import ApiException  # noqa: PLC0415

    try:
        secret = ctx.require_clients().core.read_namespaced_secret(ref.name, ctx.namespace)
    except ApiException as error:
        if error.status == 404:
            raise CredentialsUnavailableError(
                f"Secret {ref.name} not found in namespace {ctx.namespace}"
            ) from None
        raise CredentialsUnavailableError(f"cannot read Secret {ref.name}: HTTP {error.status}") from None
    data = secret.data or {}

    def value(key: str) -> str:
        if key not in data:
            raise CredentialsUnavailableError(f"Secret {ref.name} has no key {key}")
        return base64.b64decode(data[key]).decode()

    token = value(ref.session_token_key) if ref.session_token_key else None
    return S3Credentials(value(ref.access_key_id_key), value(ref.secret_access_key_key), token)


def is_due(spec: DatasetSpec, ctx: ReconcileContext) -> bool:
    """Whether a timer tick should re-check the data now."""
    status = ctx.status
    checked = status.get("lastCheckedTime")
    if status.get("observedGeneration") != ctx.generation or not checked:
        return True
    elapsed = ctx.now() - from_rfc3339(checked)
    ready: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    if ready.get("reason") == "SourceUnavailable":
        failing_for = ctx.now() - from_rfc3339(ready.get("lastTransitionTime") or checked)
        return elapsed >= min(max(failing_for / 2, RETRY_MIN), RETRY_MAX)
    return spec.refresh_interval is not None and elapsed >= parse_duration(spec.refresh_interval)


def _unavailable(message: str, checked: str) -> Outcome:
    return Outcome(
        phase="Pending",
        conditions=(ConditionUpdate(READY, "False", "SourceUnavailable", message),),
        fields={"lastCheckedTime": checked},
    )


def _read_manifest(store: ObjectStore, spec: DatasetSpec, listed: Manifest) -> tuple[Manifest, list[str]]:
    """The data's manifest: the user's (checked against the listing) or the listing itself."""
    if not spec.source.manifest_uri:
        return listed, []
    bucket, key = split_object_uri(spec.source.manifest_uri)
    try:
        manifest = manifest_from_jsonl(store.get_bytes(bucket, key).decode())
    except ManifestFormatError as error:
        return listed, [str(error)]
    return manifest, missing_from_listing(manifest, listed)


def reconcile(spec: DatasetSpec, ctx: ReconcileContext) -> Outcome:
    checked = to_rfc3339(ctx.now())
    source = S3Location.parse(spec.source.uri)
    try:
        creds = (
            read_credentials(ctx, spec.source.credentials_secret_ref)
            if spec.source.credentials_secret_ref
            else None
        )
    except CredentialsUnavailableError as error:
        return _unavailable(str(error), checked)
    store = ctx.require_clients().object_store(S3Config(spec.source.endpoint_url, spec.source.region, creds))
    try:
        listed = manifest_from_listing(store.list_objects(source), source.prefix)
        manifest, manifest_problems = _read_manifest(store, spec, listed)
    except S3UnavailableError as error:
        return _unavailable(f"{error.reason}: {error.message}", checked)

    violations = manifest_problems + contract_violations(spec.contract, manifest)
    fields: dict[str, object] = {
        "objectCount": manifest.object_count,
        "totalBytes": manifest.total_bytes,
        "fingerprint": manifest.fingerprint,
        "lastCheckedTime": checked,
        "violations": violations[:20],
    }
    events: list[Event] = []
    previous = ctx.status.get("fingerprint")
    if previous and previous != manifest.fingerprint:
        events.append(
            Event("FingerprintChanged", f"the data changed: fingerprint {previous} -> {manifest.fingerprint}")
        )
    manifest_note = ""
    if spec.source.manifest_uri:
        fields["manifestURI"] = spec.source.manifest_uri
    else:
        key = manifest_key(source.prefix, manifest.fingerprint)
        try:
            if not store.exists(source.bucket, key):
                store.put_bytes(source.bucket, key, manifest.to_jsonl().encode(), "application/jsonl")
            fields["manifestURI"] = source.uri(key)
        except S3UnavailableError as error:
            manifest_note = f"; the manifest could not be written ({error.reason})"
    if violations:
        shown = "; ".join(violations[:3]) + (f" (+{len(violations) - 3} more)" if len(violations) > 3 else "")
        return Outcome(
            phase="Failed",
            conditions=(ConditionUpdate(READY, "False", "ContractViolated", shown),),
            fields=fields,
            events=tuple(events),
        )
    message = f"{manifest.object_count} objects, {manifest.total_bytes} bytes, {manifest.fingerprint}"
    return Outcome(
        phase="Ready",
        conditions=(ConditionUpdate(READY, "True", "Validated", message + manifest_note),),
        fields=fields,
        events=tuple(events),
    )
