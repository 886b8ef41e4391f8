"""The registry says what serves (issue 17): which registry aliases an InferenceDeployment moves,
decided from the status its reconcile concluded, as data. The registry calls themselves run against
the real MLflow server in tests/integration/test_registry_serving_aliases.py; here a context without
clients proves where the registry is not asked at all (any call would raise)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from mlops_operator.api.v1alpha1 import InferenceDeploymentSpec
from mlops_operator.engine.cache import Cache
from mlops_operator.handlers import HANDLERS
from mlops_operator.handlers.base import Outcome, status_patch
from mlops_operator.handlers.context import ReconcileContext
from mlops_operator.handlers.inferencedeployment import registry_aliases as ra
from mlops_operator.handlers.modelversion import promotion
from mlops_operator.k8s.conditions import ConditionUpdate

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
ALIASES = {"stable": "production", "canary": "canary"}
SPEC = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v2"}, "registryAliases": ALIASES})
MLFLOW = {"provider": "mlflow", "project": "digits", "trackingURI": "http://mlflow:5000"}


def _want(**status: Any) -> ra.Wanted | None:
    return ra.wanted(SPEC, status)


def test_the_stable_alias_names_the_stable_version_and_the_canary_alias_a_running_canary():
    assert _want() == ra.Wanted("production", None, "canary", None)  # nothing serves yet
    assert _want(stableVersion="v1") == ra.Wanted("production", "v1", "canary", None)
    running = _want(stableVersion="v1", canaryVersion="v2", canaryWeight=50)
    assert running == ra.Wanted("production", "v1", "canary", "v2")
    # Not yet receiving traffic, or aborted (weight 0): no canary alias.
    assert _want(stableVersion="v1", canaryVersion="v2", canaryWeight=0).canary is None  # type: ignore[union-attr]
    assert _want(stableVersion="v1", canaryVersion="v2").canary is None  # type: ignore[union-attr]
    # The first version starting (no stable yet) is not a canary.
    assert _want(canaryVersion=None, modelVersion="v1") == ra.Wanted("production", None, "canary", None)


def test_without_registry_aliases_nothing_is_wanted():
    bare = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v1"}})
    assert ra.wanted(bare, {"stableVersion": "v1"}) is None
    only_stable = InferenceDeploymentSpec.model_validate(
        {"modelVersionRef": {"name": "v1"}, "registryAliases": {"stable": "production"}}
    )
    assert ra.wanted(only_stable, {"stableVersion": "v1", "canaryVersion": "v2", "canaryWeight": 10}) == (
        ra.Wanted("production", "v1", None, None)
    )


def _plan(
    want: ra.Wanted | None, applied: dict[str, Any], **status: Any
) -> dict[str, tuple[list[str], list[str]]]:
    assert want is not None
    return {n: (sorted(m.add), sorted(m.remove)) for n, m in ra.plan(want, applied, status).items()}


def _record(stable: str | None = None, canary: str | None = None) -> dict[str, Any]:
    return {
        "stableAlias": "production",
        "stableModelVersion": stable,
        "canaryAlias": "canary",
        "canaryModelVersion": canary,
    }


def test_plan_through_a_canary_promotion_and_an_abort():
    status: dict[str, Any] = {"stableVersion": "v1"}
    # First version Available: production onto it (the canary alias off it, should it be there).
    assert _plan(_want(**status), {}, **status) == {"v1": (["production"], ["canary"])}
    # Canary v2 at 50%: only the canary alias onto v2.
    status = {"stableVersion": "v1", "canaryVersion": "v2", "canaryWeight": 50}
    assert _plan(_want(**status), _record("v1"), **status) == {
        "v1": (["production"], ["canary"]),
        "v2": (["canary"], []),
    }
    # Promoted: production onto v2 and canary off it in one call; production's old place is told
    # to drop it (a no-op in the same registered model: the add moved it already).
    status = {"stableVersion": "v2"}
    assert _plan(_want(**status), _record("v1", "v2"), **status) == {
        "v2": (["production"], ["canary"]),
        "v1": ([], ["production"]),
    }
    # Aborted (weight 0): the canary alias off v3 only; production stays where it is.
    status = {"stableVersion": "v2", "canaryVersion": "v3", "canaryWeight": 0}
    assert _plan(_want(**status), _record("v2", "v3"), **status) == {
        "v2": (["production"], ["canary"]),
        "v3": ([], ["canary"]),
    }
    # The spec set back to the stable while v3 ran: v3 is no longer in the status, the record names it.
    status = {"stableVersion": "v2"}
    assert _plan(_want(**status), _record("v2", "v3"), **status)["v3"] == ([], ["canary"])


def test_a_renamed_alias_comes_off_where_the_operator_put_it():
    spec = InferenceDeploymentSpec.model_validate(
        {"modelVersionRef": {"name": "v1"}, "registryAliases": {"stable": "prod", "canary": "canary"}}
    )
    status = {"stableVersion": "v1"}
    want = ra.wanted(spec, status)
    assert want is not None
    moves = ra.plan(want, _record("v1"), status)
    assert (sorted(moves["v1"].add), sorted(moves["v1"].remove)) == (["prod"], ["canary", "production"])


@pytest.mark.parametrize(
    "aliases",
    [
        {"stable": "latest"},
        {"canary": "v3"},
        {"stable": "uid-1234"},
        {"stable": "release.1"},
        {"stable": "production", "canary": "production"},
    ],
)
def test_invalid_registry_aliases_are_refused(aliases: dict[str, str]):
    with pytest.raises(ValidationError):
        InferenceDeploymentSpec.model_validate(
            {"modelVersionRef": {"name": "v1"}, "registryAliases": aliases}
        )


def _mv(
    name: str, version: str | None, aliases: list[str], registry: dict[str, Any] | None = MLFLOW
) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Ready"}
    if version:
        status["registry"] = {"version": version, "aliases": aliases, "appliedAliases": ["staging"]}
    spec: dict[str, Any] = {
        "modelName": "digits",
        "source": {"artifactURI": "s3://b/m/"},
        "evaluation": {"datasetRef": {"name": "digits"}},
    }
    if registry:
        spec["registry"] = registry
    return {
        "kind": "ModelVersion",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": "1"},
        "spec": spec,
        "status": status,
    }


def _idep_ctx(status: dict[str, Any], *objects: dict[str, Any]) -> ReconcileContext:
    cache = Cache()
    for obj in objects:
        cache.upsert(obj["kind"], obj)
    body = {"metadata": {"name": "digits", "namespace": "ns", "uid": "u", "generation": 1}, "status": status}
    return ReconcileContext(body, None, now=lambda: NOW, cache=cache)


def _served(**fields: Any) -> Outcome:
    return Outcome("Available", (ConditionUpdate("Ready", "True", "Available", "v1 serves"),), fields)


def test_applied_already_asks_the_registry_nothing_until_the_periodic_check_is_due():
    record = {
        "modelName": "digits",
        "stableAlias": "production",
        "stableModelVersion": "v1",
        "stableRegistryVersion": "1",
        "canaryAlias": "canary",
        "checkedTime": "2026-01-01T11:59:00Z",  # a minute before NOW; checks every 300 s
    }
    synced = {"type": ra.SYNCED, "status": "True", "reason": "AliasesApplied", "message": "digits: ..."}
    ctx = _idep_ctx(
        {"stableVersion": "v1", "registry": record, "conditions": [synced]}, _mv("v1", "1", ["production"])
    )
    outcome = ra.sync(SPEC, ctx, _served(stableVersion="v1"))  # no clients: a registry call would raise
    assert outcome.fields["registry"] == record
    assert outcome.phase == "Available"
    patch, transitions = status_patch(ctx.status, outcome, 1)
    assert "registry" not in patch
    assert not [t for t in transitions if t.type == ra.SYNCED]
    assert outcome.requeue_after == 240  # when the check is due


def test_a_served_version_without_a_registry_says_so_and_moves_nothing():
    ctx = _idep_ctx({}, _mv("v1", None, [], registry=None))
    outcome = ra.sync(SPEC, ctx, _served(stableVersion="v1"))
    condition = next(c for c in outcome.conditions if c.type == ra.SYNCED)
    assert (condition.status, condition.reason) == ("False", ra.NO_REGISTRY)
    assert "no spec.registry" in condition.message
    assert outcome.phase == "Available"  # serving is not degraded by it
    assert outcome.fields["registry"] == {"stableAlias": "production", "canaryAlias": "canary"}
    unregistered = ra.sync(SPEC, _idep_ctx({}, _mv("v1", None, [])), _served(stableVersion="v1"))
    assert "not registered" in next(c for c in unregistered.conditions if c.type == ra.SYNCED).message


def test_before_anything_serves_there_is_nothing_to_say():
    starting = Outcome("Progressing", (ConditionUpdate("Ready", "False", "Starting", "v1 is starting"),), {})
    assert ra.sync(SPEC, _idep_ctx({}), starting) == starting


def test_without_registry_aliases_the_status_has_no_record_and_no_condition():
    bare = InferenceDeploymentSpec.model_validate({"modelVersionRef": {"name": "v1"}})
    outcome = ra.sync(bare, _idep_ctx({}), _served(stableVersion="v1"))
    assert outcome.fields["registry"] is None
    assert not [c for c in outcome.conditions if c.type == ra.SYNCED]


# ------------------------------------------------------------------ the ModelVersion's side ---


def _mv_ctx(mv: dict[str, Any], *objects: dict[str, Any]) -> ReconcileContext:
    cache = Cache()
    for obj in (mv, *objects):
        cache.upsert(obj["kind"], obj)
    return ReconcileContext(mv, None, now=lambda: NOW, cache=cache)


def _idep(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "InferenceDeployment",
        "metadata": {"name": "digits", "namespace": "ns", "resourceVersion": "1"},
        "status": {"registry": {"modelName": "digits", **record}},
    }


def test_a_modelversion_whose_serving_alias_moved_refreshes():
    v1, v2 = _mv("v1", "1", ["production", "staging"]), _mv("v2", "2", [])
    moved = _idep({"stableAlias": "production", "stableModelVersion": "v2", "stableRegistryVersion": "2"})
    assert promotion._aliases_taken_by_others(_mv_ctx(v1, v2, moved), v1["status"]["registry"]) == {
        "production"
    }
    # v2 gained it: its status does not say so yet.
    assert promotion._aliases_taken_by_others(_mv_ctx(v2, v1, moved), v2["status"]["registry"]) == {
        "production"
    }
    # Once both say what the registry says, nothing to refresh.
    v1["status"]["registry"]["aliases"] = ["staging"]
    v2["status"]["registry"]["aliases"] = ["production"]
    assert not promotion._aliases_taken_by_others(_mv_ctx(v1, v2, moved), v1["status"]["registry"])
    assert not promotion._aliases_taken_by_others(_mv_ctx(v2, v1, moved), v2["status"]["registry"])


def test_a_canary_alias_taken_off_every_version_refreshes_its_last_holder():
    v3 = _mv("v3", "3", ["canary", "staging"])
    off = _idep({"stableAlias": "production", "canaryAlias": "canary"})
    assert promotion._aliases_taken_by_others(_mv_ctx(v3, off), v3["status"]["registry"]) == {"canary"}
    # Not when its own spec puts it there (no InferenceDeployment's to take), nor in another model.
    v3["status"]["registry"]["appliedAliases"] = ["canary"]
    assert not promotion._aliases_taken_by_others(_mv_ctx(v3, off), v3["status"]["registry"])
    other = _mv("v3", "3", ["canary"], registry={**MLFLOW, "collection": "other"})
    assert not promotion._aliases_taken_by_others(_mv_ctx(other, off), other["status"]["registry"])


def test_an_inferencedeployment_change_wakes_the_modelversions_its_aliases_concern():
    v1, v2, v9 = _mv("v1", "1", ["production"]), _mv("v2", "2", []), _mv("v9", "9", ["staging"])
    cache = Cache()
    for mv in (v1, v2, v9):
        cache.upsert("ModelVersion", mv)
    idep = _idep({"stableAlias": "production", "stableModelVersion": "v2", "stableRegistryVersion": "2"})
    idep["status"]["stableVersion"] = "v2"
    woken = {key[2] for key in HANDLERS["InferenceDeployment"].dependents(cache, idep)}
    assert {"v1", "v2"} <= woken
    assert "v9" not in woken


def test_a_slot_that_empties_is_sent_as_null_in_the_merge_patch_once():
    before = {
        "modelName": "digits",
        "stableAlias": "production",
        "canaryAlias": "canary",
        "canaryModelVersion": "v3",
        "canaryRegistryVersion": "3",
    }
    # Neither version has a registry here: nothing to move, so no client is needed.
    ctx = _idep_ctx({"stableVersion": "v1", "registry": before}, _mv("v1", None, [], registry=None))
    ctx.cache.upsert("ModelVersion", _mv("v3", None, [], registry=None))
    outcome = ra.sync(SPEC, ctx, _served(stableVersion="v1", canaryVersion=None, canaryWeight=None))
    patch, _ = status_patch(ctx.status, outcome, 1)
    assert patch["registry"]["canaryModelVersion"] is None  # a merge patch removes the key
    assert patch["registry"]["canaryRegistryVersion"] is None
    assert patch["registry"]["stableAlias"] == "production"
    after = {"stableAlias": "production", "canaryAlias": "canary"}
    said = next(c for c in outcome.conditions if c.type == ra.SYNCED)
    condition = {"type": ra.SYNCED, "status": said.status, "reason": said.reason, "message": said.message}
    ctx = _idep_ctx(
        {"stableVersion": "v1", "registry": after, "conditions": [condition]},
        _mv("v1", None, [], registry=None),
    )
    again = ra.sync(SPEC, ctx, _served(stableVersion="v1"))
    assert "registry" not in status_patch(ctx.status, again, 1)[0]
