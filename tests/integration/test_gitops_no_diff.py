"""GitOps sees no drift: a sample applied again, server-side, as Argo CD applies it, changes nothing.

The operator writes status (through the status subresource), events and its children, never spec;
the apiserver's defaults land in fields the manifest does not set, so a second apply of the same
manifest under the same field manager is a no-op and `kubectl diff --server-side` shows nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kubernetes import client

from mlops_operator.api.v1alpha1.kinds import kind_by_name
from mlops_operator.dev.controlplane import ControlPlane
from tests.integration.conftest import OperatorProcess
from tests.samples import load, valid_samples
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"
MANAGER = "argocd"


def _get(custom: client.CustomObjectsApi, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    plural = kind_by_name(doc["kind"]).plural
    return custom.get_namespaced_custom_object(G, V, namespace, plural, doc["metadata"]["name"])  # type: ignore[no-any-return]


def _apply(control_plane: ControlPlane, namespace: str, path: Path) -> str:
    args = ("apply", "--server-side", f"--field-manager={MANAGER}", "-n", namespace, "-f", str(path))
    return control_plane.kubectl(*args).stdout


def _contained(applied: Any, live: Any, where: str = "spec") -> list[str]:
    """Where the live object says something other than what was applied (its extra fields aside)."""
    if isinstance(applied, dict) and isinstance(live, dict):
        return [p for k, v in applied.items() for p in _contained(v, live.get(k), f"{where}.{k}")]
    if isinstance(applied, list) and isinstance(live, list) and len(applied) == len(live):
        return [
            p
            for i, (a, b) in enumerate(zip(applied, live, strict=True))
            for p in _contained(a, b, f"{where}[{i}]")
        ]
    return [] if applied == live else [f"{where}: applied {applied!r}, live {live!r}"]


def _manager(obj: dict[str, Any], name: str) -> dict[str, Any]:
    (entry,) = [
        m for m in obj["metadata"]["managedFields"] if m["manager"] == name and not m.get("subresource")
    ]
    return entry


def test_applying_each_sample_twice_server_side_changes_nothing(
    operator: OperatorProcess,
    control_plane: ControlPlane,
    custom: client.CustomObjectsApi,
    namespace: str,
):
    samples = valid_samples()
    docs = {path: load(path) for path in samples}
    for path in samples:
        _apply(control_plane, namespace, path)

    def all_reconciled() -> bool:
        for doc in docs.values():
            obj = _get(custom, namespace, doc)
            if obj.get("status", {}).get("observedGeneration") != obj["metadata"]["generation"]:
                return False
        return True

    wait_for(all_reconciled, "the operator to reconcile every sample", 60)
    first = {path: _get(custom, namespace, doc) for path, doc in docs.items()}

    for path, doc in docs.items():
        out = _apply(control_plane, namespace, path)
        assert "serverside-applied" in out, out
        after = _get(custom, namespace, doc)
        before = first[path]
        name = f"{doc['kind']} {doc['metadata']['name']}"
        assert after["metadata"]["generation"] == before["metadata"]["generation"] == 1, name
        assert after["spec"] == before["spec"], name
        # A no-op for the apiserver: the field manager's entry was not even touched.
        assert _manager(after, MANAGER) == _manager(before, MANAGER), name
        # What was applied is what the apiserver keeps: its defaults only fill what the manifest left out.
        assert _contained(doc["spec"], after["spec"]) == [], name
        # Only the GitOps manager owns spec: the operator writes status through its subresource.
        for entry in after["metadata"]["managedFields"]:
            if entry["manager"] != MANAGER:
                assert "f:spec" not in entry.get("fieldsV1", {}), (name, entry["manager"])
        assert any(m.get("subresource") == "status" for m in after["metadata"]["managedFields"]), name

        # `kubectl diff` as Argo CD's server-side diff does it: a dry-run apply compared with the live
        # object. A status write landing between its two reads would show; one retry covers that.
        diff = ("diff", "--server-side", f"--field-manager={MANAGER}", "-n", namespace, "-f", str(path))
        result = control_plane.kubectl(*diff, check=False)
        if result.returncode == 1:
            result = control_plane.kubectl(*diff, check=False)
        assert result.returncode == 0, (name, result.stdout, result.stderr)
