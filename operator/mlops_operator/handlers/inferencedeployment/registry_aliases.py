"""The registry says what serves: `spec.registryAliases` moved to the registry versions of the
ModelVersions an InferenceDeployment serves.

Level-based, from the status the reconcile has just concluded (never from the spec's wish):
- `stable` names the registry version of `stableVersion` (set once a rollout is complete and the
  version serves all traffic); moving it there takes it off the version it replaces.
- `canary` names the registry version of `canaryVersion` while that canary runs (weight above 0);
  promoted or aborted, the alias comes off that version (only that one).

Each ModelVersion's registry is opened as the ModelVersion opens it (its own `spec.registry`, its
tenant Secret in the namespace). The registry is asked only when what should be applied differs from
what `status.registry` records as applied, and every call is safe to repeat. A registry outage never
blocks or degrades serving: the phase and Ready stay what the workload says, `RegistryAliasesSynced`
says False with the registry's reason (one Warning event on the transition), and the reconcile comes
back with the outage backoff. Unsetting `spec.registryAliases` leaves the aliases where they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import ValidationError

from ...api.v1alpha1 import InferenceDeploymentSpec, ModelVersionSpec
from ...integrations.registry import RegistryRejectedError
from ...k8s.conditions import ConditionUpdate, find_condition
from ...k8s.events import Event
from ...timeutil import from_rfc3339, to_rfc3339
from ..base import MAX_MESSAGE, Outcome, outage_requeue
from ..context import ReconcileContext
from ..reads import read_object
from ..registries import REGISTRY_ERRORS, open_registry, registered_model_name, registry_problem

SYNCED = "RegistryAliasesSynced"
ALIAS_RESTORED = "AliasRestored"  # an applied alias was found moved or deleted in the registry
CHECKED = "checkedTime"
NO_REGISTRY = "ModelVersionNotRegistered"  # the served ModelVersion has no registry version to name
RECORD_KEYS = (
    "modelName",
    "stableAlias",
    "stableModelVersion",
    "stableRegistryVersion",
    "canaryAlias",
    "canaryModelVersion",
    "canaryRegistryVersion",
)


@dataclass(frozen=True)
class Wanted:
    """Which ModelVersion each alias should name, from the status just concluded."""

    stable_alias: str | None = None
    stable: str | None = None  # ModelVersion name
    canary_alias: str | None = None
    canary: str | None = None  # ModelVersion name; None: the canary alias on no version


def wanted(spec: InferenceDeploymentSpec, status: Mapping[str, Any]) -> Wanted | None:
    """None without spec.registryAliases: the registry is not touched."""
    aliases = spec.registry_aliases
    if aliases is None or (aliases.stable is None and aliases.canary is None):
        return None
    stable = status.get("stableVersion") or None
    canary = status.get("canaryVersion") or None
    running = canary is not None and canary != stable and int(status.get("canaryWeight") or 0) > 0
    return Wanted(
        stable_alias=aliases.stable,
        stable=str(stable) if aliases.stable and stable else None,
        canary_alias=aliases.canary,
        canary=str(canary) if aliases.canary and running else None,
    )


@dataclass
class Moves:
    """What to ask of one ModelVersion's registry version."""

    add: set[str] = field(default_factory=set)
    remove: set[str] = field(default_factory=set)


def plan(want: Wanted, applied: Mapping[str, Any], status: Mapping[str, Any]) -> dict[str, Moves]:
    """ModelVersion name -> the aliases to add to and remove from its registry version.

    Adds move an alias (it leaves whichever version had it). Removes take an alias off that one
    version only, and only where it is: the canary alias off the version the status or the record
    last gave it (an aborted or promoted canary), and off the stable version; an alias of the record
    the spec no longer names (renamed) off the version it was put on; the stable alias off the
    version it was on, which matters when the new stable is another registered model."""
    moves: dict[str, Moves] = {}

    def on(name: str | None) -> Moves | None:
        return moves.setdefault(name, Moves()) if name else None

    if (m := on(want.stable)) and want.stable_alias:
        m.add.add(want.stable_alias)
    if (m := on(want.canary)) and want.canary_alias:
        m.add.add(want.canary_alias)
    canary_aliases = {a for a in (want.canary_alias, applied.get("canaryAlias")) if a}
    left_by_canary = {applied.get("canaryModelVersion"), status.get("canaryVersion"), want.stable}
    for name in left_by_canary - {want.canary, None}:
        if m := on(str(name)):
            m.remove |= canary_aliases
    old_alias, old_stable = applied.get("stableAlias"), applied.get("stableModelVersion")
    moved = old_stable != want.stable or old_alias != want.stable_alias
    if old_alias and old_stable and moved and (m := on(str(old_stable))):
        m.remove.add(str(old_alias))
    for m in moves.values():
        m.remove -= m.add
    return {name: m for name, m in moves.items() if m.add or m.remove}


def _prune(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in RECORD_KEYS if record.get(k) is not None}


@dataclass(frozen=True)
class Unnameable:
    """Why a ModelVersion has no registry version an alias could name."""

    reason: str
    message: str


def _registered(ctx: ReconcileContext, name: str) -> tuple[ModelVersionSpec, str] | Unnameable:
    """The ModelVersion's spec and its registry version."""
    mv = read_object(ctx, "ModelVersion", "modelversions", name)
    if mv is None:
        return Unnameable(NO_REGISTRY, f"ModelVersion {name} does not exist")
    try:
        spec = ModelVersionSpec.model_validate(mv.get("spec") or {})
    except ValidationError:
        return Unnameable(NO_REGISTRY, f"ModelVersion {name} has a spec the operator cannot read")
    if spec.registry is None:
        return Unnameable(
            NO_REGISTRY, f"ModelVersion {name} has no spec.registry: no registry version to name"
        )
    version = ((mv.get("status") or {}).get("registry") or {}).get("version")
    if not version:
        return Unnameable(NO_REGISTRY, f"ModelVersion {name} is not registered (no status.registry.version)")
    return spec, str(version)


def _describe(record: Mapping[str, Any]) -> str:
    parts = []
    for slot in ("stable", "canary"):
        alias = record.get(f"{slot}Alias")
        if alias:
            version = record.get(f"{slot}RegistryVersion")
            where = f"version {version} ({record.get(f'{slot}ModelVersion')})" if version else "no version"
            parts.append(f"{alias} -> {where}")
    return f"{record.get('modelName') or 'registered model'}: {', '.join(parts)}"


def _with(
    ctx: ReconcileContext,
    outcome: Outcome,
    condition: ConditionUpdate,
    record: Mapping[str, Any] | None,
    *,
    checked: str | None = None,
) -> Outcome:
    """The outcome with the condition and `status.registry` (`checkedTime`: `checked`, else as it
    was). The status is merge-patched: a key the record no longer has is sent as null (once: the
    next status lacks it too)."""
    before: Mapping[str, Any] = ctx.status.get("registry") or {}
    written = None
    if record:
        written = {**dict.fromkeys(before), **record}
        if checked or before.get(CHECKED):
            written[CHECKED] = checked or before.get(CHECKED)
    fields = {**outcome.fields, "registry": written}
    return replace(outcome, conditions=(*outcome.conditions, condition), fields=fields)


def _check_due(ctx: ReconcileContext, applied: Mapping[str, Any]) -> float | None:
    """Seconds until the aliases are next read back from the registry (0: now); None: never."""
    interval = ctx.config.registry_alias_check_seconds
    if not interval:
        return None
    checked = applied.get(CHECKED)
    if not checked:
        return 0.0
    elapsed = (ctx.now() - from_rfc3339(str(checked))).total_seconds()
    return max(0.0, interval - elapsed)


def _requeue(outcome: Outcome, seconds: float | None) -> Outcome:
    if seconds is None:
        return outcome
    due = seconds if outcome.requeue_after is None else min(outcome.requeue_after, seconds)
    return replace(outcome, requeue_after=max(due, 1.0))


def _failed(ctx: ReconcileContext, outcome: Outcome, error: Exception, applied: Mapping[str, Any]) -> Outcome:
    """Serving goes on as concluded; the record stays what was last applied, and the outage backoff
    brings the reconcile back."""
    said: Mapping[str, Any] = find_condition(ctx.status.get("conditions", []), SYNCED) or {}
    reason, message = registry_problem(error, "moving spec.registryAliases")
    failed = _with(ctx, outcome, ConditionUpdate(SYNCED, "False", reason, message[:MAX_MESSAGE]), applied)
    since = said.get("lastTransitionTime") if said.get("reason") == reason else None
    delay = outage_requeue(None, reason, ctx.now(), ctx.config, failing_since=since)
    due = delay if failed.requeue_after is None else min(failed.requeue_after, delay)
    return replace(failed, requeue_after=due)


def _restore(
    ctx: ReconcileContext, record: Mapping[str, Any], targets: Mapping[str, tuple[ModelVersionSpec, str]]
) -> list[str]:
    """Read the applied aliases back from the registry and put back any that is not on its version
    any more (moved or deleted there by hand): what serves is what the registry must say."""
    restored = []
    for slot in ("stable", "canary"):
        alias, name = record.get(f"{slot}Alias"), record.get(f"{slot}ModelVersion")
        if not alias or not name or name not in targets:
            continue
        mv_spec, version = targets[name]
        registry = open_registry(mv_spec, ctx)
        found = registry.get(version)
        if found is None:
            raise RegistryRejectedError(f"version {version} ({name}) is gone from the registry")
        if alias not in found.aliases:
            registry.set_aliases(version, add=[alias], remove=[])
            restored.append(f"{alias} -> version {version} ({name})")
    return restored


def sync(spec: InferenceDeploymentSpec, ctx: ReconcileContext, outcome: Outcome) -> Outcome:
    """The outcome with `status.registry` and `RegistryAliasesSynced` added; the registry moved
    where what it records differs from what the outcome serves."""
    status = {**ctx.status, **outcome.fields}
    said: Mapping[str, Any] = find_condition(ctx.status.get("conditions", []), SYNCED) or {}
    want = wanted(spec, status)
    if want is None:
        if not said:
            return replace(outcome, fields={**outcome.fields, "registry": None})
        message = "spec.registryAliases is empty: the aliases stay where they are"
        return _with(ctx, outcome, ConditionUpdate(SYNCED, "True", "NotConfigured", message), None)
    applied: Mapping[str, Any] = ctx.status.get("registry") or {}
    if not (
        want.stable or want.canary or applied.get("stableModelVersion") or applied.get("canaryModelVersion")
    ):
        return outcome  # nothing serves yet, nothing was moved: nothing to say
    record: dict[str, Any] = {"stableAlias": want.stable_alias, "canaryAlias": want.canary_alias}
    targets: dict[str, tuple[ModelVersionSpec, str]] = {}
    problem: Unnameable | None = None
    for slot, name in (("stable", want.stable), ("canary", want.canary)):
        if name is None:
            continue
        found = _registered(ctx, name)
        if isinstance(found, Unnameable):
            problem = problem or found
            continue
        targets[name] = found
        record[f"{slot}ModelVersion"], record[f"{slot}RegistryVersion"] = name, found[1]
        record.setdefault("modelName", registered_model_name(found[0]))
    record = _prune(record)
    if record == _prune(applied) and (
        (problem is None and said.get("status") == "True")
        or (problem is not None and said.get("status") == "False" and said.get("reason") == problem.reason)
    ):
        # Applied already: the registry is asked again only when the periodic check is due.
        restated = ConditionUpdate(
            SYNCED,
            "True" if problem is None else "False",
            str(said.get("reason")),
            str(said.get("message") or ""),
        )
        due = _check_due(ctx, applied) if problem is None else None
        if due is None or due > 0:
            return _requeue(_with(ctx, outcome, restated, record), due)
        try:
            restored = _restore(ctx, record, targets)
        except REGISTRY_ERRORS as error:
            return _failed(ctx, outcome, error, applied)
        checked = _with(ctx, outcome, restated, record, checked=to_rfc3339(ctx.now()))
        if restored:
            note = f"put back in the registry (moved or deleted there): {', '.join(restored)}"
            checked = replace(checked, events=(*checked.events, Event(ALIAS_RESTORED, note, "Warning")))
        return _requeue(checked, ctx.config.registry_alias_check_seconds)
    try:
        for name, moves in plan(want, applied, status).items():
            _move(ctx, name, moves, targets)
    except REGISTRY_ERRORS as error:
        return _failed(ctx, outcome, error, applied)
    if problem is not None:
        # What could be applied was; what serves has no registry version to name (a change of the
        # ModelVersion wakes this object).
        return _with(ctx, outcome, ConditionUpdate(SYNCED, "False", problem.reason, problem.message), record)
    synced = ConditionUpdate(SYNCED, "True", "AliasesApplied", _describe(record)[:MAX_MESSAGE])
    applied_now = _with(ctx, outcome, synced, record, checked=to_rfc3339(ctx.now()))
    return _requeue(applied_now, ctx.config.registry_alias_check_seconds or None)


def _move(
    ctx: ReconcileContext, name: str, moves: Moves, targets: Mapping[str, tuple[ModelVersionSpec, str]]
) -> None:
    """One set_aliases call on the ModelVersion's registry version: adds move the aliases there,
    removes take them off that version only."""
    target = targets.get(name)
    if target is None:
        found = _registered(ctx, name)
        if isinstance(found, Unnameable):
            return  # gone or never registered: nothing of ours to take off it
        target = found
    mv_spec, version = target
    done = open_registry(mv_spec, ctx).set_aliases(
        version, add=sorted(moves.add), remove=sorted(moves.remove)
    )
    missing = moves.add - set(done.aliases)
    if missing:
        raise RegistryRejectedError(
            f"version {version} does not carry {', '.join(sorted(missing))} after moving them there"
        )
