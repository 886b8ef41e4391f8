"""Dataset reconcile: list the S3 prefix, fingerprint it, check the contract, record the manifest."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from ..api.v1alpha1 import DatasetSpec
from ..builders.dataset import (
    Manifest,
    ManifestFormatError,
    contract_violations,
    manifest_from_jsonl,
    manifest_from_listing,
    manifest_key,
    missing_from_listing,
)
from ..integrations.endpoints import EndpointNotAllowedError, require_allowed
from ..integrations.s3 import (
    ObjectStore,
    ObjectTooLargeError,
    S3Config,
    S3Location,
    S3UnavailableError,
    split_object_uri,
)
from ..k8s.conditions import ConditionUpdate, find_condition
from ..k8s.events import Event
from ..timeutil import from_rfc3339, parse_duration, to_rfc3339
from .base import READY, Outcome, Result, Unchanged, outage_retry_delay
from .context import ReconcileContext
from .secrets import CredentialsUnavailableError
from .stores import read_credentials

# While the source is unavailable, retry with `outage_retry_delay` within these bounds.
RETRY_MIN = timedelta(seconds=15)
RETRY_MAX = timedelta(minutes=5)
# Ready reasons looked at again with that backoff: an outage, and an endpoint the operator's
# allow-list refuses (no request is sent, so a retry is free and an administrator's change to the
# allow-list takes effect within RETRY_MAX).
RETRIED_REASONS = frozenset({"SourceUnavailable", "EndpointNotAllowed"})


def due_in(spec: DatasetSpec, ctx: ReconcileContext) -> float | None:
    """Seconds until the data should be checked again (0: now); None: only a change wakes it."""
    status = ctx.status
    checked = status.get("lastCheckedTime")
    if status.get("observedGeneration") != ctx.generation or not checked:
        return 0.0
    elapsed = ctx.now() - from_rfc3339(checked)
    ready: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    if ready.get("reason") in RETRIED_REASONS:
        since = ready.get("lastTransitionTime") or checked
        delay = outage_retry_delay(since, ctx.now(), minimum=RETRY_MIN, maximum=RETRY_MAX)
        return max(0.0, (delay - elapsed).total_seconds())
    if spec.refresh_interval is None:
        return None
    return max(0.0, (parse_duration(spec.refresh_interval) - elapsed).total_seconds())


def _unavailable(
    ctx: ReconcileContext,
    message: str,
    checked: str,
    *,
    reason: str = "SourceUnavailable",
    phase: str = "Pending",
) -> Outcome:
    ready: Mapping[str, Any] = find_condition(ctx.status.get("conditions", []), READY) or {}
    since = ready.get("lastTransitionTime") if ready.get("reason") == reason else None
    return Outcome(
        phase=phase,
        conditions=(ConditionUpdate(READY, "False", reason, message),),
        fields={"lastCheckedTime": checked},
        requeue_after=outage_retry_delay(
            since or checked, ctx.now(), minimum=RETRY_MIN, maximum=RETRY_MAX
        ).total_seconds(),
    )


def _refused(
    ctx: ReconcileContext, reason: str, message: str, checked: str, *, requeue_after: float | None = None
) -> Outcome:
    """The operator will not read this Dataset as specified: only a change to it (or, for a manifest
    that may shrink, the refresh interval) is worth another look."""
    return Outcome(
        phase="Failed",
        conditions=(ConditionUpdate(READY, "False", reason, message),),
        fields={"lastCheckedTime": checked},
        requeue_after=requeue_after,
    )


def _read_manifest(
    store: ObjectStore, spec: DatasetSpec, listed: Manifest, max_bytes: int
) -> tuple[Manifest, list[str]]:
    """The data's manifest: the user's (checked against the listing) or the listing itself.
    Raises `ObjectTooLargeError` for a manifest over `max_bytes`, before downloading it."""
    if not spec.source.manifest_uri:
        return listed, []
    bucket, key = split_object_uri(spec.source.manifest_uri)
    try:
        manifest = manifest_from_jsonl(store.get_bytes(bucket, key, max_bytes=max_bytes).decode())
    except UnicodeDecodeError as error:
        return listed, [
            f"manifest {spec.source.manifest_uri} is not UTF-8 text ({error.reason} at byte {error.start})"
        ]
    except ManifestFormatError as error:
        return listed, [str(error)]
    return manifest, missing_from_listing(manifest, listed)


def reconcile(spec: DatasetSpec, ctx: ReconcileContext) -> Result:
    wait = due_in(spec, ctx)
    if wait is None or wait > 0:
        return Unchanged(wait)  # a restart or our own status write: nothing to list
    checked = to_rfc3339(ctx.now())
    source = S3Location.parse(spec.source.uri)
    refresh = parse_duration(spec.refresh_interval).total_seconds() if spec.refresh_interval else None
    # No SSRF: the endpoint is checked before anything is read or sent.
    try:
        require_allowed(
            spec.source.endpoint_url, ctx.config.s3_endpoint_allowlist, setting="MLOPS_S3_ENDPOINT_ALLOWLIST"
        )
    except EndpointNotAllowedError as error:
        return _unavailable(ctx, str(error), checked, reason="EndpointNotAllowed", phase="Failed")
    # No confused deputy: the tenant's own credentials, or nothing (never the operator's identity).
    ref = spec.source.credentials_secret_ref
    if ref is None:  # the schema requires it; an object stored before it did
        return _refused(
            ctx,
            "CredentialsRequired",
            "spec.source.credentialsSecretRef is required: the operator reads a Dataset only with "
            "credentials from a Secret in its namespace, never with its own identity",
            checked,
        )
    try:
        creds = read_credentials(ctx, ref)
    except CredentialsUnavailableError as error:
        return _unavailable(ctx, str(error), checked)
    try:
        store = ctx.require_clients().object_store(
            S3Config(spec.source.endpoint_url, spec.source.region, creds)
        )
    except ValueError as error:  # botocore refuses an endpoint it cannot parse
        return _unavailable(ctx, f"InvalidEndpoint: {error}", checked)
    try:
        listed = manifest_from_listing(store.list_objects(source), source.prefix)
        manifest, manifest_problems = _read_manifest(store, spec, listed, ctx.config.manifest_max_bytes)
    except S3UnavailableError as error:
        return _unavailable(ctx, f"{error.reason}: {error.message}", checked)
    except ObjectTooLargeError as error:
        return _refused(
            ctx,
            "ManifestTooLarge",
            f"the manifest {error.uri} is {error.size} bytes, over the operator's limit of {error.limit} "
            "bytes (MLOPS_MANIFEST_MAX_BYTES); it was not read. Split the data set or drop manifestURI "
            "to let the operator list the prefix",
            checked,
            requeue_after=refresh,
        )

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
            requeue_after=refresh,
        )
    message = f"{manifest.object_count} objects, {manifest.total_bytes} bytes, {manifest.fingerprint}"
    return Outcome(
        phase="Ready",
        conditions=(ConditionUpdate(READY, "True", "Validated", message + manifest_note),),
        fields=fields,
        events=tuple(events),
        requeue_after=refresh,
    )
