"""`mlopsctl dev`'s drift loop: drift found, labelled data landed, retrained, gated, promoted.

After the canary of a second version, on the objects `samples/` made:
1. follow: ModelPipeline `digits` gets a champion/challenger gate (`GATE`), and the
   InferenceDeployment follows it instead of naming a ModelVersion (what Git would say: "serve what
   pipeline digits promotes"); it resolves to the pipeline's first run, trained on the demo data
   beside the sample TrainingRun and promoted (no champion to beat).
2. drift: a batch of digits, half of them brighter, lands as the DriftMonitor's current Dataset;
   the real check (Evidently) turns it `Drifted`; the pipeline says the drift is `DriftUnfixable`
   (its training data did not change), and does not retrain on the same data.
3. labels: labelled digits, half of them brighter, become the training data, as a new version of the
   data set (a new prefix the Dataset is pointed at, so the fingerprint changes and the old version,
   which models were trained on and DriftMonitors profile, stays readable); the pipeline's next run
   trains on it, the champion/challenger gate scores both versions on its held-out split, and the
   challenger is promoted.
4. promote: the InferenceDeployment resolves to the new version and canaries to it, under live
   traffic of brighter images (the canary's analysis measures it); brighter test images go through
   Triton, to the new version's pod and to the stable one; once the canary is done, the monitor
   checks the landed batch again against the new version's training data.

Each step prints what changed; the first that falls short raises `StageFailedError` with a message
naming it ("drift loop: ..."), which `mlopsctl dev` prints before exiting non-zero.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlops_contract import envvars

from . import drifted_digits
from .s3 import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, LocalS3

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from .controlplane import ControlPlane
    from .runner import LocalPodRunner

BUCKET = "mlops-demo"
LANDED_PREFIX = "datasets/digits-landed/batch-1"  # the batch the DriftMonitor checks, half brighter
LABELLED_PREFIX = "datasets/digits/v2"  # the training data, brighter digits included
MODELVERSION_LABEL = "mlops.dev/modelversion"  # on serving pods: the ModelVersion they serve
SETTLED = frozenset({"Promoted", "Rejected", "Failed", "Superseded", "Skipped"})
# How long each step may take on the demo's two CPUs (training the digits CNN takes ~10 s).
DRIFT_TIMEOUT = 300.0
RUN_TIMEOUT = 600.0
RESOLVE_TIMEOUT = 180.0
MONITOR_TIMEOUT = 90.0
CANARY_TIMEOUT = 420.0  # the sample's canary: 10% -> 60 s analysis -> 50% -> 60 s pause -> 100%


class StageFailedError(Exception):
    """A step of the drift loop fell short; the message names it."""


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


# -- pure pieces ----------------------------------------------------------------------------------------


# The champion/challenger gate of the demo's pipeline (as samples/06-modelpipeline.yaml's; applied
# again so the demo does not depend on the sample's edits): a run's version is promoted only if it
# is at least 0.01 more accurate than the champion on the held-out split of the training Dataset as it
# is at the run (new labelled data included), both scored on it.
GATE: dict[str, Any] = {
    "championGate": {
        "split": "test",
        "metrics": [{"name": "accuracy", "direction": "HigherIsBetter", "margin": 0.01}],
    },
    "approval": "Automatic",
}


def follow_patch(pipeline: str) -> dict[str, Any]:
    """The JSON merge patch that makes an InferenceDeployment follow a ModelPipeline instead of naming
    a ModelVersion (the two are exclusive: the version's reference is removed)."""
    return {"spec": {"modelVersionRef": None, "modelVersionFrom": {"pipelineRef": {"name": pipeline}}}}


def dataset_at(sample: Mapping[str, Any], name: str, uri: str) -> dict[str, Any]:
    """A Dataset like `sample` (same endpoint, credentials, format, contract) for the data at `uri`
    (a prefix; its manifest is manifest.jsonl there), named `name`, without status or server fields."""
    doc: dict[str, Any] = json.loads(json.dumps(dict(sample)))
    doc["metadata"] = {"name": name}
    doc.pop("status", None)
    prefix = uri if uri.endswith("/") else uri + "/"
    doc["spec"]["source"] = {**doc["spec"]["source"], "uri": prefix, "manifestURI": prefix + "manifest.jsonl"}
    return doc


def source_patch(uri: str) -> dict[str, Any]:
    """The merge patch that points a Dataset at another version of its data (a prefix with its manifest)."""
    prefix = uri if uri.endswith("/") else uri + "/"
    return {"spec": {"source": {"uri": prefix, "manifestURI": prefix + "manifest.jsonl"}}}


def condition(obj: Mapping[str, Any], kind: str) -> dict[str, Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((dict(c) for c in conditions if c.get("type") == kind), {})


def run_on(status: Mapping[str, Any], fingerprint: str) -> dict[str, Any] | None:
    """The pipeline's latest run (not a skipped trigger) that trains on the Dataset at `fingerprint`."""
    runs = [r for r in status.get("runs") or [] if r.get("datasetFingerprint") == fingerprint]
    runs = [r for r in runs if r.get("outcome") != "Skipped"]
    return dict(runs[-1]) if runs else None


def run_named(status: Mapping[str, Any], name: str) -> dict[str, Any] | None:
    return next((dict(r) for r in status.get("runs") or [] if r.get("name") == name), None)


def first_run(status: Mapping[str, Any]) -> dict[str, Any] | None:
    return next((dict(r) for r in status.get("runs") or [] if r.get("outcome") != "Skipped"), None)


def run_shortfall(run: Mapping[str, Any]) -> str | None:
    """Why a settled run promoted nothing ("pipeline run digits-2 was Rejected: ..."), or None when it
    was promoted or is still going."""
    outcome = run.get("outcome")
    if outcome == "Promoted" or outcome not in SETTLED:
        return None
    return f"pipeline run {run.get('name')} was {outcome}: {run.get('message') or 'no message'}"


def _figure(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "none"


def gate_lines(run: Mapping[str, Any]) -> list[str]:
    """The champion/challenger gate of a run, metric by metric, both figures on the same data."""
    comparison = run.get("comparison") or []
    if not comparison:
        return [f"no comparison: {run.get('message') or 'no champion to beat'}"]
    lines = []
    for metric in comparison:
        better = "higher" if metric.get("direction") == "HigherIsBetter" else "lower"
        lines.append(
            f"{metric.get('name')}: challenger {run.get('modelVersion')} "
            f"{_figure(metric.get('challenger'))} vs champion {run.get('champion')} "
            f"{_figure(metric.get('champion'))} (must be {better} by "
            f"{metric.get('margin')}): {'passed' if metric.get('passed') else 'failed'}"
        )
    return lines


def drift_lines(status: Mapping[str, Any]) -> list[str]:
    """The drifted share and the drifted columns of a DriftMonitor's last check, and where its report is."""
    share, threshold = status.get("driftShare"), status.get("shareThreshold")
    lines = [
        f"drift share {_figure(share)} (threshold {threshold}): {status.get('driftedCount')} of "
        f"{status.get('columnCount')} columns drifted ({status.get('driftedColumns') or 'none'})"
    ]
    for column in status.get("columns") or []:
        if column.get("drifted"):
            lines.append(
                f"  {column.get('name')}: {column.get('method')} {_figure(column.get('score'))} "
                f"(threshold {column.get('threshold')})"
            )
    lines.append(f"report: {status.get('reportURI')}")
    return lines


def showcase_index(labels: Any, predicted: Any, before: Any | None) -> int:
    """The image to show: the first the new version gets right and the old one got wrong, else the
    first the new version gets right, else the first."""
    import numpy as np  # noqa: PLC0415

    right = np.asarray(predicted) == np.asarray(labels)
    fixed = right & (np.asarray(before) != np.asarray(labels)) if before is not None else right
    for candidates in (fixed, right):
        if candidates.any():
            return int(np.argmax(candidates))
    return 0


def serving_summary(status: Mapping[str, Any]) -> str:
    resolved = status.get("resolvedFrom") or {}
    follows = (
        f"follows ModelPipeline {resolved.get('pipeline')}, resolved to {resolved.get('modelVersion')}; "
        if resolved
        else ""
    )
    canary = status.get("canaryVersion")
    return (
        f"{follows}phase {status.get('phase')}, rolling out {status.get('modelVersion')}: stable "
        f"{status.get('stableVersion')}"
        + (
            f", canary {canary} at {status.get('canaryWeight')}% (step {status.get('currentStep')})"
            if canary
            else ""
        )
    )


# -- the loop -------------------------------------------------------------------------------------------


@dataclass
class DriftLoop:
    """The drift loop on the objects of `docs` (the applied samples) in `namespace`."""

    plane: ControlPlane
    namespace: str
    docs: Sequence[Mapping[str, Any]]
    runner: LocalPodRunner
    s3: LocalS3
    trainer_python: Path

    def _doc(self, kind: str) -> Mapping[str, Any]:
        doc = next((d for d in self.docs if d["kind"] == kind), None)
        if doc is None:
            raise StageFailedError(f"drift loop: the samples have no {kind}")
        return doc

    def _get(self, plural: str, name: str) -> dict[str, Any]:
        out = self.plane.kubectl("get", plural, name, "-n", self.namespace, "-o", "json", check=False)
        obj: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {}
        return obj

    def _patch(self, plural: str, name: str, patch: Mapping[str, Any]) -> None:
        self.plane.kubectl(
            "patch", plural, name, "-n", self.namespace, "--type=merge", "-p", json.dumps(patch)
        )

    def _wait(
        self, what: str, probe: Callable[[], Any], timeout: float, *, why: Callable[[], str] | None = None
    ) -> Any:
        """probe() until it returns something truthy; StageFailedError naming `what` after `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            found = probe()
            if found:
                return found
            if time.monotonic() > deadline:
                raise StageFailedError(
                    f"drift loop: {what} within {timeout:.0f}s" + (f" ({why()})" if why else "")
                )
            time.sleep(1)

    def run(self) -> None:
        started = time.monotonic()
        pipeline = str(self._doc("ModelPipeline")["metadata"]["name"])
        idep = str(self._doc("InferenceDeployment")["metadata"]["name"])
        champion = self.follow(pipeline, idep)
        self.drift(pipeline)
        fingerprint = self.label(pipeline)
        promoted = self.retrain(pipeline, fingerprint, champion)
        self.promote(idep, promoted)
        _say(f"drift loop done in {time.monotonic() - started:.0f}s")

    # 1. The InferenceDeployment follows the pipeline; its first run is the champion.
    def follow(self, pipeline: str, idep: str) -> str:
        _say(f"drift loop, 1/4: the InferenceDeployment {idep} follows ModelPipeline {pipeline}")
        gate = GATE["championGate"]
        _say(
            f"ModelPipeline {pipeline} gates each new version against its champion (spec.promotion): "
            + ", ".join(f"{m['name']} {m['direction']} by {m['margin']}" for m in gate["metrics"])
            + f" on the {gate['split']} split of its training Dataset, approval {GATE['approval']}"
        )
        self._patch("modelpipelines", pipeline, {"spec": {"promotion": GATE}})

        def first() -> dict[str, Any] | None:
            status = self._get("modelpipelines", pipeline).get("status") or {}
            run = first_run(status)
            if run is not None and (shortfall := run_shortfall(run)):
                raise StageFailedError(f"drift loop: {shortfall}")
            return run if run is not None and status.get("latestPromoted") else None

        run = self._wait(
            f"ModelPipeline {pipeline} promoted no version",
            first,
            RUN_TIMEOUT,
            why=lambda: self._pipeline_state(pipeline),
        )
        version = str(run.get("modelVersion"))
        accuracy = (self._get("modelversions", version).get("status") or {}).get("accuracy")
        _say(
            f"its first run {run['name']} ({run.get('trigger')} at {run.get('datasetFingerprint')}) "
            f"trained TrainingRun {run.get('trainingRun')}; ModelVersion {version} (accuracy "
            f"{_figure(accuracy)}) was "
            f"{run.get('outcome')}: {run.get('message') or 'the first version, no champion to beat'}"
        )
        _say(
            f"patching InferenceDeployment {idep}: spec.modelVersionRef removed, spec.modelVersionFrom = "
            f'{{pipelineRef: {{name: {pipeline}}}}} (Git: "serve what pipeline {pipeline} promotes")'
        )
        self._patch("inferencedeployments", idep, follow_patch(pipeline))
        status = self._wait(
            f"InferenceDeployment {idep} did not resolve to {version}",
            lambda: self._resolved(idep, version),
            RESOLVE_TIMEOUT,
            why=lambda: serving_summary(self._get("inferencedeployments", idep).get("status") or {}),
        )
        _say(f"InferenceDeployment {idep}: {serving_summary(status)}")
        return version

    def _resolved(self, idep: str, version: str) -> dict[str, Any] | None:
        status = self._get("inferencedeployments", idep).get("status") or {}
        resolved = (status.get("resolvedFrom") or {}).get("modelVersion")
        return status if resolved == version and status.get("modelVersion") == version else None

    def _pipeline_state(self, pipeline: str) -> str:
        obj = self._get("modelpipelines", pipeline)
        status = obj.get("status") or {}
        ready = condition(obj, "Ready")
        runs = (
            ", ".join(f"{r.get('name')}: {r.get('outcome')}" for r in status.get("runs") or []) or "no runs"
        )
        return f"phase {status.get('phase')}, {runs}; {ready.get('reason')}: {ready.get('message')}"

    # 2. A brighter batch lands: Drifted; the pipeline cannot fix that by retraining on the same data.
    def drift(self, pipeline: str) -> None:
        monitor = self._doc("DriftMonitor")
        name = str(monitor["metadata"]["name"])
        landed_name = str(monitor["spec"]["currentDatasetRef"]["name"])
        _say(f"drift loop, 2/4: a batch of digits, half of them brighter, lands as Dataset {landed_name}")
        written = self._write("landed", LANDED_PREFIX)
        _say(
            f"wrote {written['records'].get('test')} digits, every other one "
            f"{drifted_digits.BRIGHTNESS_SHIFT}/16 brighter, to {written['uri']} ({written['objectCount']} "
            f"objects, fingerprint {written['fingerprint']})"
        )
        landed = dataset_at(self._doc("Dataset"), landed_name, f"s3://{BUCKET}/{LANDED_PREFIX}/")
        self.plane.kubectl_apply(
            [{**landed, "metadata": {**landed["metadata"], "namespace": self.namespace}}]
        )

        def drifted() -> dict[str, Any] | None:
            obj = self._get("driftmonitors", name)
            status = obj.get("status") or {}
            if status.get("currentFingerprint") != written["fingerprint"]:
                return None  # an earlier check (none here), or still checking the batch
            if status.get("phase") == "Failed":
                failed = condition(obj, "Ready")
                raise StageFailedError(
                    f"drift loop: DriftMonitor {name}'s check failed: {failed.get('reason')}: "
                    f"{failed.get('message')}"
                )
            if condition(obj, "Drifted").get("status") == "False":
                raise StageFailedError(
                    f"drift loop: DriftMonitor {name} found no drift in the landed batch: "
                    + "; ".join(drift_lines(status))
                )
            return obj if condition(obj, "Drifted").get("status") == "True" else None

        def state() -> str:
            obj = self._get("driftmonitors", name)
            ready = condition(obj, "Ready")
            phase = (obj.get("status") or {}).get("phase")
            return f"phase {phase}, {ready.get('reason')}: {ready.get('message')}"

        obj = self._wait(f"DriftMonitor {name} did not turn Drifted", drifted, DRIFT_TIMEOUT, why=state)
        status = obj["status"]
        check = status.get("lastCheck") or {}
        _say(
            f"DriftMonitor {name} is Drifted: check {check.get('number')} ({check.get('trigger')}) of "
            f"ModelVersion {status.get('modelVersion')}, trained on {status.get('referenceFingerprint')}, "
            f"against {landed_name} at {status.get('currentFingerprint')}"
        )
        for line in drift_lines(status):
            print(f"    {line}", flush=True)

        def unfixable() -> dict[str, Any] | None:
            said = condition(self._get("modelpipelines", pipeline), "DriftUnfixable")
            return said if said.get("status") == "True" else None

        try:
            said = self._wait(f"ModelPipeline {pipeline} did not say DriftUnfixable", unfixable, 60)
        except StageFailedError:
            # Not a stage of its own: the pipeline may have started a run on the drift instead.
            said = {"reason": "none", "message": self._pipeline_state(pipeline)}
        _say(f"ModelPipeline {pipeline}: DriftUnfixable ({said.get('reason')}): {said.get('message')}")

    # 3. Labelled brighter digits join the training data: a new version of the data set.
    def label(self, pipeline: str) -> str:
        dataset = str(self._get("modelpipelines", pipeline)["spec"]["datasetRef"]["name"])
        before = (self._get("datasets", dataset).get("status") or {}).get("fingerprint")
        _say(
            f"drift loop, 3/4: labelled digits that cover the shift join the training data "
            f"(Dataset {dataset})"
        )
        written = self._write("labelled", LABELLED_PREFIX)
        records = written["records"]
        _say(
            f"wrote {records.get('train')} training and {records.get('test')} held-out digits, half of them "
            f"brighter, to {written['uri']}; pointing Dataset {dataset} at it (was {before})"
        )
        self._patch("datasets", dataset, source_patch(f"s3://{BUCKET}/{LABELLED_PREFIX}/"))

        def validated() -> dict[str, Any] | None:
            obj = self._get("datasets", dataset)
            status = obj.get("status") or {}
            if status.get("phase") == "Failed":
                ready = condition(obj, "Ready")
                raise StageFailedError(
                    f"drift loop: Dataset {dataset} failed on the labelled data: {ready.get('message')}"
                )
            return status if status.get("fingerprint") == written["fingerprint"] else None

        status = self._wait(f"Dataset {dataset} did not validate the labelled data", validated, 120)
        _say(
            f"Dataset {dataset} Ready: {status.get('objectCount')} objects, {status.get('totalBytes')} "
            f"bytes, fingerprint {status.get('fingerprint')}"
        )
        return str(written["fingerprint"])

    # ... and the pipeline retrains on it; the gate compares the challenger with the champion.
    def retrain(self, pipeline: str, fingerprint: str, champion: str) -> str:
        started = self._wait(
            f"ModelPipeline {pipeline} started no run on the labelled data",
            lambda: run_on(self._get("modelpipelines", pipeline).get("status") or {}, fingerprint),
            120,
            why=lambda: self._pipeline_state(pipeline),
        )
        name = started["name"]
        _say(
            f"ModelPipeline {pipeline} started run {name} ({started.get('trigger')}): TrainingRun "
            f"{started.get('trainingRun')}, ModelVersion {started.get('modelVersion')}"
        )

        def settled() -> dict[str, Any] | None:
            run = run_named(self._get("modelpipelines", pipeline).get("status") or {}, name)
            if run is None:
                raise StageFailedError(f"drift loop: pipeline run {name} left the pipeline's history")
            return run if run.get("outcome") in SETTLED else None

        run = self._wait(
            f"pipeline run {name} did not finish",
            settled,
            RUN_TIMEOUT,
            why=lambda: self._pipeline_state(pipeline),
        )
        training = self._get("trainingruns", str(run.get("trainingRun"))).get("status") or {}
        metrics = training.get("metrics") or {}
        _say(
            f"TrainingRun {run.get('trainingRun')}: {training.get('phase')} in "
            f"{metrics.get('train_seconds', 0):.1f}s of training, accuracy "
            f"{_figure(metrics.get('accuracy'))} on its own held-out split"
        )
        _say(
            f"champion/challenger gate of run {name} (champion {run.get('champion') or champion}, "
            f"re-scored by ModelVersion {run.get('championEvaluation')} on the same data):"
        )
        for line in gate_lines(run):
            print(f"    {line}", flush=True)
        if shortfall := run_shortfall(run):
            raise StageFailedError(f"drift loop: {shortfall}")
        promoted = str(run.get("modelVersion"))
        _say(f"run {name}: {run.get('outcome')}: {run.get('message') or ''}")
        return promoted

    # 4. The InferenceDeployment canaries to the promoted version; a brighter image through Triton.
    def promote(self, idep: str, version: str) -> None:
        _say(f"drift loop, 4/4: InferenceDeployment {idep} follows the promotion to {version}")
        images, labels = self._brighter_images(32)
        model = str((self._get("modelversions", version).get("spec") or {}).get("modelName"))
        _say(
            "brighter images keep arriving: requests to every serving pod (as the Service spreads them), "
            "which the canary's analysis measures in Prometheus"
        )
        with Traffic(self.runner, model, images[:4]):
            status = self._wait(
                f"InferenceDeployment {idep} did not roll out {version}",
                lambda: self._canarying(idep, version),
                RESOLVE_TIMEOUT,
                why=lambda: serving_summary(self._get("inferencedeployments", idep).get("status") or {}),
            )
            _say(f"InferenceDeployment {idep}: {serving_summary(status)}")
            print(
                self.plane.kubectl("get", "idep", idep, "-n", self.namespace, check=False).stdout, flush=True
            )
            i = self._predict_brighter(idep, version, status, model=model, images=images, labels=labels)
            self._canary_done(idep, version)
        print(self.plane.kubectl("get", "idep", idep, "-n", self.namespace, check=False).stdout, flush=True)
        url = self._wait(f"no pod serving {version} answered ready", lambda: self._serving_url(version), 120)
        predicted = int(triton_infer(url, model, images[i : i + 1]).argmax())
        _say(
            f"{version} serves all traffic; Triton ({url}) predicts {predicted} for the brighter test "
            f"image of a {int(labels[i])}"
        )
        self._monitor_follows(version)

    def _canarying(self, idep: str, version: str) -> dict[str, Any] | None:
        """The InferenceDeployment's status once it resolved to `version` and rolls it out."""
        status = self._resolved(idep, version)
        if status is None:
            return None
        if status.get("phase") in ("Failed", "Degraded"):
            raise StageFailedError(
                f"drift loop: InferenceDeployment {idep} is {status.get('phase')}: {serving_summary(status)}"
            )
        return status if version in (status.get("canaryVersion"), status.get("stableVersion")) else None

    def _monitor_follows(self, version: str) -> None:
        """What the DriftMonitor says once it checked the landed batch against the new version's
        training data (it follows what the InferenceDeployment serves); informative, not a stage."""
        name = str(self._doc("DriftMonitor")["metadata"]["name"])

        def rechecked() -> dict[str, Any] | None:
            status = self._get("driftmonitors", name).get("status") or {}
            last = status.get("lastCheck") or {}
            return (
                status if last.get("modelVersion") == version and status.get("phase") != "Checking" else None
            )

        try:
            status = self._wait(f"DriftMonitor {name} did not check {version}", rechecked, MONITOR_TIMEOUT)
        except StageFailedError as late:
            _say(f"{late} (not a stage of make dev: it rechecks on its own)")
            return
        check = status.get("lastCheck") or {}
        _say(
            f"DriftMonitor {name} checked again ({check.get('trigger')}) against the training data of "
            f"{version}: {status.get('phase')}"
        )
        for line in drift_lines(status):
            print(f"    {line}", flush=True)

    def _predict_brighter(
        self, idep: str, version: str, status: Mapping[str, Any], *, model: str, images: Any, labels: Any
    ) -> int:
        """The brighter images through Triton, to a pod of the promoted version and to a stable one;
        the index of the image to show."""
        url = self._wait(
            f"no pod of InferenceDeployment {idep} serving {version} answered ready",
            lambda: self._serving_url(version),
            120,
        )
        predicted = triton_infer(url, model, images).argmax(axis=1)
        stable = status.get("stableVersion")
        old = self._serving_url(str(stable)) if stable and stable != version else None
        before = triton_infer(old, model, images).argmax(axis=1) if old else None
        _say(
            f"Triton, pod of {version} ({url}): {int((predicted == labels).sum())} of {len(labels)} brighter "
            "test images right"
            + (
                f"; pod of the stable {stable} ({old}): {int((before == labels).sum())}"
                if before is not None
                else ""
            )
        )
        i = showcase_index(labels, predicted, before)
        _say(
            f"a brighter test image of a {int(labels[i])}: {version} predicts {int(predicted[i])}"
            + (f", {stable} predicted {int(before[i])}" if before is not None else "")
        )
        return i

    def _canary_done(self, idep: str, version: str) -> None:
        """Wait until the canary of `version` has run its steps and it is the stable version."""
        seen: list[str] = []

        def stable() -> Mapping[str, Any] | None:
            status = self._get("inferencedeployments", idep).get("status") or {}
            if status.get("phase") in ("Failed", "Degraded") or status.get("modelVersion") != version:
                raise StageFailedError(
                    f"drift loop: the canary of {version} did not finish: {serving_summary(status)}"
                )
            summary = serving_summary(status)
            if not seen or seen[-1] != summary:
                seen.append(summary)
                _say(f"InferenceDeployment {idep}: {summary}")
            done = status.get("stableVersion") == version and not status.get("canaryVersion")
            return status if done and status.get("phase") == "Available" else None

        self._wait(
            f"InferenceDeployment {idep} did not finish the canary of {version}",
            stable,
            CANARY_TIMEOUT,
            why=lambda: serving_summary(self._get("inferencedeployments", idep).get("status") or {}),
        )

    def _brighter_images(self, count: int) -> tuple[Any, Any]:
        """The first `count` brighter images of the landed batch (its first shard), and their labels."""
        images, labels = read_images(self.s3, LANDED_PREFIX, 256)
        brighter = drifted_digits.is_brighter(images)
        return images[brighter][:count], labels[brighter][:count]

    def _serving_url(self, version: str) -> str | None:
        """The Triton URL of a serving pod of `version` that answers ready, if any."""
        out = self.plane.kubectl(
            "get",
            "pods",
            "-n",
            self.namespace,
            "-l",
            f"{MODELVERSION_LABEL}={version}",
            "-o",
            "json",
            check=False,
        )
        pods = json.loads(out.stdout).get("items", []) if out.returncode == 0 else []
        for pod in pods:
            url = self.runner.endpoints.get(pod["metadata"]["name"])
            if url and triton_ready(url):
                return url
        return None

    def _write(self, kind: str, prefix: str) -> dict[str, Any]:
        """Write one of drifted_digits' data sets with the trainer's writer (in the trainer's venv)."""
        env = {
            **os.environ,
            envvars.AWS_ENDPOINT_URL_S3: self.s3.endpoint_url,
            envvars.AWS_ACCESS_KEY_ID: DEV_ACCESS_KEY_ID,
            envvars.AWS_SECRET_ACCESS_KEY: DEV_SECRET_ACCESS_KEY,
        }
        done = subprocess.run(
            [str(self.trainer_python), "-P", drifted_digits.__file__, kind, f"s3://{BUCKET}/{prefix}/"],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise StageFailedError(
                f"drift loop: writing the {kind} digits failed: {done.stderr.strip()[-2000:]}"
            )
        written: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return written


# -- Triton ---------------------------------------------------------------------------------------------


class Traffic:
    """Requests to every serving pod the runner runs, until the block ends: the live traffic a
    canary's analysis measures (success rate, latency), which nothing else sends in `make dev`."""

    def __init__(self, runner: LocalPodRunner, model: str, images: Any, pause: float = 0.1) -> None:
        self.runner, self.model, self.images, self.pause = runner, model, images, pause
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="dev-traffic", daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            for url in list(self.runner.endpoints.values()):
                with contextlib.suppress(OSError, ValueError):  # a server starting or going
                    triton_infer(url, self.model, self.images)
            self.stop.wait(self.pause)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=35)


def read_images(s3: LocalS3, prefix: str, count: int, split: str = "test") -> tuple[Any, Any]:
    """The first `count` images of a split's first shard, prepared as the trainer prepares its input
    (scaled by the schema's maxValue, with a channel axis: trainer-image/mlops_trainer/dataset.py
    load_split), and their labels."""
    import numpy as np  # noqa: PLC0415

    client = s3.client()
    schema = json.loads(client.get_object(Bucket=BUCKET, Key=f"{prefix}/schema.json")["Body"].read())
    shard = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{split}/shard-00000.npz")
    with np.load(io.BytesIO(shard["Body"].read())) as data:
        pixels = data[schema["features"]["name"]][:count].astype(np.float32) / np.float32(
            schema["features"]["maxValue"]
        )
        labels = data[schema["labels"]["name"]][:count].astype(np.int64)
    images = pixels[:, None, :, :] if pixels.ndim == 3 else pixels
    return images, labels


def triton_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:  # noqa: S310 - local
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def triton_infer(url: str, model: str, images: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The model's outputs (logits, one row per image) for a batch of images, through Triton's HTTP API."""
    import numpy as np  # noqa: PLC0415

    body = {
        "inputs": [
            {
                "name": "images",
                "shape": list(images.shape),
                "datatype": "FP32",
                "data": images.ravel().tolist(),
            }
        ]
    }
    request = urllib.request.Request(  # noqa: S310 - the local tritonserver
        f"{url}/v2/models/{model}/infer",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 - the local tritonserver
        output = json.loads(response.read())["outputs"][0]
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
