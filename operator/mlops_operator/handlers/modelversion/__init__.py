"""ModelVersion reconcile: wait for the trained model, compile it, evaluate it, check the gates,
register it, move its aliases. One module per concern (Argo Rollouts' `rollout/` package is the
model): `source` (what it compiles from), `stages` (the compile and evaluate Jobs), `gates`,
`registry` (registration and aliases), `promotion` (a registered version's stage and aliases),
`deletion` (finalizers), `dependents` (what wakes it).

Level-based like TrainingRun: each call reads what the watches delivered (the TrainingRun, the
Dataset, the stage Jobs and their pods, by owner UID) and the status, and does the next step.
- Compile starting pins what the artifact depends on (`status.pinned`, `status.specHash`): the
  trained model's URI, the Dataset whose S3 settings and held-out split are used, the image; every
  attempt of both stages is built from the pin. A later change of those fields is refused
  (SpecAccepted=False); stage, aliases and the registry credentials may change (promotion).
- Registration is idempotent: the registry is asked for the version tagged with this object's UID
  before one is created, so a restart or a lost response never makes a second version.
- With a registry, a finalizer lets deletion archive the version (deletionPolicy Archive), found by
  its UID tag; an SRE lets a deletion through an unreachable registry with the annotation
  SKIP_CLEANUP_ANNOTATION. A version an InferenceDeployment serves holds the in-use finalizer: its
  deletion (and the archive) waits until nothing serves it (`deletion`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...api.v1alpha1 import ModelVersionSpec
from ...builders.modelversion import compile_hash
from ...k8s.conditions import ConditionUpdate
from ..base import Result, Unchanged
from ..context import ReconcileContext
from .common import PLURAL, SPEC_ACCEPTED, pinned_spec
from .deletion import IN_USE_FINALIZER, SKIP_CLEANUP_ANNOTATION, deleting, protect_while_in_use, served_by
from .dependents import aliases_moved_by, sharing_a_model, waiting_on_dataset, waiting_on_training
from .promotion import SETTLED_PHASES, promote, restate
from .registry import FINALIZER, register
from .stages import clean_up_finished_jobs, current_stage, run_stage, start_compile

__all__ = [
    "FINALIZER",
    "IN_USE_FINALIZER",
    "PLURAL",
    "SKIP_CLEANUP_ANNOTATION",
    "aliases_moved_by",
    "reconcile",
    "served_by",
    "sharing_a_model",
    "waiting_on_dataset",
    "waiting_on_training",
]


def _accepted(spec: ModelVersionSpec, status: Mapping[str, Any]) -> ConditionUpdate:
    locked = status.get("specHash")
    if locked and locked != compile_hash(spec):
        return ConditionUpdate(
            SPEC_ACCEPTED,
            "False",
            "ImmutableAfterStart",
            "the spec changed after compile started; only stage, registry.aliases, "
            "registry.credentialsSecretRef, registry.deletionPolicy, scheduling, serviceAccountName and "
            "the stages' deadlineSeconds may change. This version goes on with the spec it started "
            "with: create a new ModelVersion to compile differently",
        )
    return ConditionUpdate(SPEC_ACCEPTED, "True", "Accepted", "")


def reconcile(spec: ModelVersionSpec, ctx: ReconcileContext) -> Result:
    if ctx.body["metadata"].get("deletionTimestamp"):
        return deleting(pinned_spec(ctx, spec), ctx)
    if protect_while_in_use(ctx):
        # A reconcile of its own: the status write would be conditioned on the old resourceVersion.
        # The patch's watch event brings the object back.
        return Unchanged()
    clean_up_finished_jobs(ctx)
    status = ctx.status
    phase = status.get("phase")
    if not status.get("specHash"):
        if phase == "Failed" and status.get("observedGeneration") == ctx.generation:
            # TrainingFailed or NoModelArtifact: settled until the spec names another source.
            return restate(ctx, ConditionUpdate(SPEC_ACCEPTED, "True", "Accepted", ""))
        return start_compile(spec, ctx)
    accepted = _accepted(spec, status)
    spec = pinned_spec(ctx, spec)
    if phase == "Ready":
        return promote(spec, ctx, accepted)
    if phase in SETTLED_PHASES:
        return restate(ctx, accepted)
    if phase == "Registering":
        return register(spec, ctx, accepted)
    if (stage := current_stage(status)) is not None:  # Compiling, Evaluating, or Queued in either
        return run_stage(spec, ctx, stage, accepted)
    raise RuntimeError(f"unexpected phase {phase!r} after compile started")
