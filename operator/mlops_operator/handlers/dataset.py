"""Dataset reconcile: list the S3 prefix, fingerprint it, check the contract, record the manifest.

A prefix may hold millions of objects and the reconcile runs in a worker every tenant shares, so the
listing is never held whole: it is fingerprinted and checked page by page as it arrives (bounded
memory), stops at the operator's object limit (`TooManyObjects`), and the manifest is streamed to S3.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from itertools import islice
from typing import Any

from ..api.v1alpha1 import DatasetSpec
from ..api.v1alpha1.dataset import DataContract
from ..builders.dataset import (
    DataChangedError,
    DataSummary,
    ManifestFormatError,
    TooManyObjectsError,
    UnsortedError,
    compare_with_manifest,
    contract_violations,
    listing_entries,
    manifest_entries,
    manifest_key,
    manifest_lines,
    summarize,
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
from .base import READY, Outcome, Result, Unchanged, outage_requeue
from .context import ReconcileContext
from .secrets import CredentialsUnavailableError
from .stores import read_credentials

# Ready reasons looked at again with the one outage backoff (`outage_requeue`, within the operator's
# retry settings): an outage, and an endpoint the operator's allow-list refuses (no request is sent,
# so a retry is free and an administrator's change to the allow-list takes effect within the longest
# retry).
RETRIED_REASONS = frozenset({"SourceUnavailable", "EndpointNotAllowed"})
# A manifest that could not be written: the Dataset is usable, and listing it again (a whole listing,
# for a large prefix) is worth doing only every so often.
MANIFEST_RETRY = timedelta(seconds=15)
# More objects than the operator lists: listing again finds as many, so only a new spec or limit helps.
TOO_MANY_OBJECTS = "TooManyObjects"


def due_in(spec: DatasetSpec, ctx: ReconcileContext) -> float | None:
    """Seconds until the data should be checked again (0: now); None: only a change wakes it."""
    status = ctx.status
    checked = status.get("lastCheckedTime")
    if status.get("observedGeneration") != ctx.generation or not checked:
        return 0.0
    elapsed = ctx.now() - from_rfc3339(checked)
    ready: Mapping[str, Any] = find_condition(status.get("conditions", []), READY) or {}
    if ready.get("reason") == TOO_MANY_OBJECTS:
        return 0.0 if status.get("objectLimit") != ctx.config.dataset_max_objects else None
    if ready.get("reason") in RETRIED_REASONS and ctx.secrets_changed:
        return 0.0  # its credentials Secret appeared or changed: the outage may be over
    if ready.get("reason") in RETRIED_REASONS:
        delay = outage_requeue(
            status.get("conditions"), str(ready.get("reason")), ctx.now(), ctx.config, failing_since=checked
        )
        return max(0.0, delay - elapsed.total_seconds())
    due = [parse_duration(spec.refresh_interval)] if spec.refresh_interval else []
    if _manifest_missing(
        spec, status, ready.get("reason")
    ):  # its write failed: listed and written again soon
        due.append(MANIFEST_RETRY)
    return max(0.0, (min(due) - elapsed).total_seconds()) if due else None


def _manifest_missing(spec: DatasetSpec, status: Mapping[str, Any], reason: str | None) -> bool:
    """A listed Dataset whose operator manifest could not be recorded (S3 refused the write, or the
    data changed while it was written)."""
    return (
        not spec.source.manifest_uri
        and reason in ("Validated", "ContractViolated")
        and not status.get("manifestURI")
    )


def _unavailable(
    ctx: ReconcileContext,
    message: str,
    checked: str,
    *,
    reason: str = "SourceUnavailable",
    phase: str = "Pending",
) -> Outcome:
    return Outcome(
        phase=phase,
        conditions=(ConditionUpdate(READY, "False", reason, message),),
        fields={"lastCheckedTime": checked},
        requeue_after=outage_requeue(
            ctx.status.get("conditions"), reason, ctx.now(), ctx.config, failing_since=checked
        ),
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


def _against_manifest(
    store: ObjectStore, spec: DatasetSpec, source: S3Location, limit: int, max_bytes: int
) -> tuple[DataSummary, DataSummary, list[str]]:
    """With the user's manifest: (its summary, checked for the contract; the listing's, with how it
    differs from it; problems reading it). Both are streamed and merged as they arrive (they come
    sorted by key); an unsorted one is sorted in memory, within MLOPS_MANIFEST_MAX_BYTES and the
    object limit. A manifest that cannot be read leaves the listing to stand in for it, with the
    problem. Raises `ObjectTooLargeError` for a manifest over `max_bytes`, before downloading it."""
    assert spec.source.manifest_uri
    bucket, key = split_object_uri(spec.source.manifest_uri)

    def manifest() -> Iterator[Any]:
        return manifest_entries(store.iter_lines(bucket, key, max_bytes=max_bytes))

    def listing() -> Iterator[Any]:
        return listing_entries(store.list_objects(source), source.prefix)

    try:
        try:
            return (*compare_with_manifest(listing(), manifest(), spec.contract, limit=limit), [])
        except UnsortedError:
            ordered = sorted(islice(manifest(), limit + 1))
            listed = _sorted_listing(store, source, limit)
            return (*compare_with_manifest(listed, ordered, spec.contract, limit=limit), [])
    except ManifestFormatError as error:
        data, _ = _summarize_listing(store, source, spec.contract, limit)
        return data, data, [f"manifest {spec.source.manifest_uri}: {error}"]


def _sorted_listing(store: ObjectStore, source: S3Location, limit: int) -> list[Any]:
    """For a store that does not list in key order: the listing sorted, at most `limit` entries."""
    entries = list(islice(listing_entries(store.list_objects(source), source.prefix), limit + 1))
    if len(entries) > limit:
        raise TooManyObjectsError(limit)
    return sorted(entries)


def _summarize_listing(
    store: ObjectStore, source: S3Location, contract: DataContract, limit: int
) -> tuple[DataSummary, bool]:
    """The listing's summary, streamed; and whether the store lists in key order (S3 does)."""
    try:
        entries = listing_entries(store.list_objects(source), source.prefix)
        return summarize(entries, contract, limit=limit), True
    except UnsortedError:
        return summarize(_sorted_listing(store, source, limit), contract, limit=limit), False


def _write_manifest(
    store: ObjectStore, source: S3Location, fingerprint: str, limit: int, in_order: bool
) -> str:
    """Record the listing under its fingerprint, listed again and streamed (a multipart upload):
    its URI, or "" when the data changed in between (written at the next check)."""
    key = manifest_key(source.prefix, fingerprint)
    if store.exists(source.bucket, key):
        return source.uri(key)
    entries: Iterable[Any] = (
        islice(listing_entries(store.list_objects(source), source.prefix), limit + 1)
        if in_order
        else _sorted_listing(store, source, limit)
    )
    try:
        store.put_stream(source.bucket, key, manifest_lines(entries, fingerprint), "application/jsonl")
    except (DataChangedError, UnsortedError, TooManyObjectsError):
        return ""
    return source.uri(key)


def _too_many(limit: int, checked: str) -> Outcome:
    return Outcome(
        phase="Failed",
        conditions=(
            ConditionUpdate(
                READY,
                "False",
                TOO_MANY_OBJECTS,
                f"the prefix holds more than {limit} objects, the operator's limit "
                "(MLOPS_DATASET_MAX_OBJECTS); listing stopped there and is not tried again until the "
                "Dataset's spec or the limit changes. Split the data set into smaller prefixes",
            ),
        ),
        fields={"lastCheckedTime": checked, "objectLimit": limit},
    )


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
    limit = ctx.config.dataset_max_objects
    try:
        manifest_problems: list[str] = []
        in_order = True
        if spec.source.manifest_uri:  # the contract is checked on it, and the listing against it
            data, listed, manifest_problems = _against_manifest(
                store, spec, source, limit, ctx.config.manifest_max_bytes
            )
        else:
            listed, in_order = _summarize_listing(store, source, spec.contract, limit)
            data = listed
    except S3UnavailableError as error:
        return _unavailable(ctx, f"{error.reason}: {error.message}", checked)
    except TooManyObjectsError as error:
        return _too_many(error.limit, checked)
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

    violations = manifest_problems + list(listed.differences) + contract_violations(spec.contract, data)
    unlisted = listed.difference_count - len(listed.differences)  # counted, not kept
    fields: dict[str, object] = {
        "objectCount": data.object_count,
        "totalBytes": data.total_bytes,
        "fingerprint": data.fingerprint,
        "lastCheckedTime": checked,
        "violations": violations[:20],
        "objectLimit": None,
    }
    events: list[Event] = []
    previous = ctx.status.get("fingerprint")
    if previous and previous != data.fingerprint:
        events.append(
            Event("FingerprintChanged", f"the data changed: fingerprint {previous} -> {data.fingerprint}")
        )
    manifest_note = ""
    if spec.source.manifest_uri:
        fields["manifestURI"] = spec.source.manifest_uri
    else:
        try:
            written = _write_manifest(store, source, data.fingerprint, limit, in_order)
        except S3UnavailableError as error:
            written, manifest_note = "", f"; the manifest could not be written ({error.reason})"
        fields["manifestURI"] = written or None  # never a manifest of other data
        if not written and not manifest_note:
            manifest_note = "; the data changed while its manifest was written"
        if not written:
            manifest_note += f" (listed and written again in {MANIFEST_RETRY.total_seconds():.0f}s)"
            refresh = min(refresh or math.inf, MANIFEST_RETRY.total_seconds())
    if violations:
        more = len(violations) + unlisted - 3
        shown = "; ".join(violations[:3]) + (f" (+{more} more)" if more > 0 else "")
        return Outcome(
            phase="Failed",
            conditions=(ConditionUpdate(READY, "False", "ContractViolated", shown),),
            fields=fields,
            events=tuple(events),
            requeue_after=refresh,
        )
    message = f"{data.object_count} objects, {data.total_bytes} bytes, {data.fingerprint}"
    return Outcome(
        phase="Ready",
        conditions=(ConditionUpdate(READY, "True", "Validated", message + manifest_note),),
        fields=fields,
        events=tuple(events),
        requeue_after=refresh,
    )
