"""Two replicas sharing a kopf peering: the higher priority one works, the other stands by and takes
over when the first goes away."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from tests.integration.conftest import start_operator
from tests.samples import load, valid_samples
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"


def _model_version(name: str) -> dict[str, Any]:
    doc = load(next(p for p in valid_samples() if "modelversion" in p.name))
    return {**doc, "metadata": {"name": name}}


def _reconciled(custom: client.CustomObjectsApi, namespace: str, name: str) -> bool:
    obj = custom.get_namespaced_custom_object(G, V, namespace, "modelversions", name)
    return bool(obj.get("status", {}).get("observedGeneration") == obj["metadata"]["generation"])


def test_standby_replica_pauses_then_takes_over(
    control_plane: ControlPlane, custom: client.CustomObjectsApi, namespace: str, tmp_path: Path
):
    custom.create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        namespace,
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "mlops"}},
    )
    peering = {"MLOPS_PEERING_NAME": "mlops", "MLOPS_PEERING_LIFETIME_SECONDS": "10"}
    # Verbose: the standby's log then says when each watch-stream has actually paused.
    standby = start_operator(
        control_plane,
        namespace,
        tmp_path / "standby.log",
        {**peering, "MLOPS_PEERING_PRIORITY": "10", "MLOPS_VERBOSE": "true"},
    )
    try:
        active = start_operator(
            control_plane, namespace, tmp_path / "active.log", {**peering, "MLOPS_PEERING_PRIORITY": "20"}
        )
        try:
            # Peering is cooperative, not a lock: the standby stops reconciling once kopf has paused
            # it (its engine's queue, driven by the daemon on the peering object), a moment after it
            # sees the higher-priority peer (the single status-write path, with its resourceVersion
            # precondition, keeps that window safe). Its informers go on: a warm cache for a takeover.
            def paused() -> bool:
                _, seen, after = standby.log.read_text().partition("Pausing operations in favour of")
                return bool(seen) and "standing by: reconciles paused" in after

            wait_for(paused, "the standby's reconciles to pause", 30)
            custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _model_version("mv-a"))
            wait_for(lambda: _reconciled(custom, namespace, "mv-a"), "the active replica to reconcile", 30)
            assert "mv-a" not in standby.log.read_text()
        finally:
            active.stop()  # a clean exit removes its peering entry: the standby resumes at once
        wait_for(lambda: "Resuming operations" in standby.log.read_text(), "the standby to resume", 30)
        custom.create_namespaced_custom_object(G, V, namespace, "modelversions", _model_version("mv-b"))
        wait_for(lambda: _reconciled(custom, namespace, "mv-b"), "the former standby to reconcile", 30)
    finally:
        standby.stop()
