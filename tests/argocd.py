"""The Argo CD health checks of charts/mlops-operator/argocd/, run as Argo CD runs them.

Argo CD (gopher-lua, Lua 5.1) sets the global `obj` to the live object and reads the table the
script returns, {status=..., message=...}. Here the same script runs on lupa's `lua51` engine with
exactly the libraries Argo CD opens for a health script from argocd-cm (`useOpenLibs` unset):
gopher-lua is started with `SkipOpenLibs` and given package, base and table, plus a "safe" os
(`time`, `date`) reachable only through `require("os")` (argo-cd util/lua/lua.go `runLua`,
oslib_safe.go). No `string` (nor string methods: gopher-lua's string metatable comes with that
library), no `math`, `io`, `os` global, `coroutine` or `debug`: a script that uses one fails here
as it would in Argo CD. Shared by the unit tests (on objects captured from the integration tests,
tests/data/argocd/) and the integration test that captures them (on the live objects).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lupa import lua51

ROOT = Path(__file__).resolve().parents[1]
ARGOCD = ROOT / "charts" / "mlops-operator" / "argocd"
CAPTURED = ROOT / "tests" / "data" / "argocd"
KINDS = ("Dataset", "TrainingRun", "ModelVersion", "InferenceDeployment", "DriftMonitor", "ModelPipeline")
HEALTH = {"Healthy", "Progressing", "Degraded", "Suspended", "Missing"}
# The globals of gopher-lua's base library (baselib.go baseFuncs, OpenBase) and package library
# (loadlib.go), the two of its libraries Argo CD opens with table (a global table of its own).
ARGOCD_BASE = frozenset(
    {
        "_G", "_VERSION", "assert", "collectgarbage", "dofile", "error", "getfenv", "getmetatable",
        "ipairs", "load", "loadfile", "loadstring", "module", "next", "pairs", "pcall", "print",
        "rawequal", "rawget", "rawset", "require", "select", "setfenv", "setmetatable", "tonumber",
        "tostring", "type", "unpack", "xpcall", "package",
    }
)  # fmt: skip
# gopher-lua's table library (tablelib.go): Lua 5.1's without foreach, foreachi and setn.
ARGOCD_TABLE = frozenset({"concat", "getn", "insert", "maxn", "remove", "sort"})
# Argo CD's safe os (oslib_safe.go), preloaded for require("os").
ARGOCD_OS = ("time", "date")

# Each captured object (tests/data/argocd/<name>.json) and the health its kind's script must give
# it: (status, a fragment of the message). The integration test test_argocd_health.py makes every
# one of these objects on the real apiserver, asserts the same, and (MLOPS_CAPTURE_ARGOCD=1) saves it.
EXPECTED: dict[str, tuple[str, str]] = {
    "dataset-no-status": ("Progressing", "waiting for the operator to reconcile this Dataset"),
    "dataset-ready": ("Healthy", "Validated: "),
    "dataset-source-unavailable": ("Degraded", "SourceUnavailable: Secret missing not found"),
    "dataset-contract-violated": ("Degraded", "ContractViolated: "),
    "dataset-generation-behind": ("Progressing", "waiting for the operator to observe generation 2"),
    "trainingrun-no-status": ("Progressing", "waiting for the operator to reconcile this TrainingRun"),
    "trainingrun-dataset-not-found": ("Missing", "DatasetNotFound: Dataset nowhere does not exist"),
    "trainingrun-dataset-not-ready": ("Progressing", "DatasetNotReady: "),
    "trainingrun-queued-no-node-fits": ("Progressing", "NoNodeFits: "),
    "trainingrun-running": ("Progressing", "Running: attempt 1 of 3 is running"),
    "trainingrun-backoff": ("Progressing", "BackoffBeforeRetry: attempt "),
    "trainingrun-suspended": ("Suspended", "Suspended: suspended before it started"),
    "trainingrun-succeeded": ("Healthy", "Succeeded: attempt 1 succeeded"),
    "trainingrun-failed": ("Degraded", "InvalidConfig: "),
    "trainingrun-spec-changed": ("Degraded", "ImmutableAfterStart: the spec changed after the run started"),
    "modelversion-no-status": ("Progressing", "waiting for the operator to reconcile this ModelVersion"),
    "modelversion-training-run-not-found": (
        "Missing",
        "TrainingRunNotFound: TrainingRun digits-cnn-r1 does not exist",
    ),
    "modelversion-waiting-for-training": ("Progressing", "WaitingForTraining: TrainingRun run is Running"),
    "modelversion-compiling": ("Progressing", "Compiling: "),
    "modelversion-training-failed": ("Degraded", "TrainingFailed: TrainingRun bad failed"),
    "inferencedeployment-no-status": (
        "Progressing",
        "waiting for the operator to reconcile this InferenceDeployment",
    ),
    "inferencedeployment-modelversion-not-ready": ("Progressing", "ModelVersionNotReady: ModelVersion"),
    "inferencedeployment-no-promoted-version": (
        "Progressing",
        "NoPromotedVersion: ModelPipeline digits has promoted no ModelVersion yet",
    ),
    "driftmonitor-no-status": ("Progressing", "waiting for the operator to reconcile this DriftMonitor"),
    "driftmonitor-modelversion-not-ready": ("Progressing", "ModelVersionNotReady: ModelVersion"),
    "modelpipeline-no-status": ("Progressing", "waiting for the operator to reconcile this ModelPipeline"),
    "modelpipeline-dataset-not-ready": ("Progressing", "DatasetNotReady: Dataset unavailable is not Ready"),
}


def argocd_runtime() -> Any:
    """A Lua 5.1 state with the libraries Argo CD gives a health script, and no other."""
    runtime = lua51.LuaRuntime(unpack_returned_tuples=False)
    assert str(runtime.eval("_VERSION")) == "Lua 5.1"
    runtime.execute(
        """
        local base, tablelib, oslib = ...
        local safe_os = {}
        for i = 1, #oslib do safe_os[oslib[i]] = os[oslib[i]] end
        package.loaded.os, package.preload.os = nil, function() return safe_os end
        for name in pairs(package.loaded) do
          if name ~= "_G" and name ~= "package" and name ~= "table" then package.loaded[name] = nil end
        end
        for name in pairs(table) do
          if not tablelib[name] then table[name] = nil end
        end
        -- Strings lose their methods: gopher-lua sets the string metatable in its string library.
        debug.setmetatable("", nil)
        local names = {}
        for name in pairs(_G) do names[#names + 1] = name end
        for _, name in ipairs(names) do
          if not base[name] and name ~= "table" then _G[name] = nil end
        end
        """,
        runtime.table_from(dict.fromkeys(ARGOCD_BASE, True)),
        runtime.table_from(dict.fromkeys(ARGOCD_TABLE, True)),
        runtime.table_from(list(ARGOCD_OS)),
    )
    return runtime


def script(kind: str) -> str:
    return (ARGOCD / f"{kind.lower()}.lua").read_text()


def assess(obj: dict[str, Any], kind: str | None = None) -> dict[str, str]:
    """The health Argo CD would show for `obj`: {"status": ..., "message": ...}."""
    runtime = argocd_runtime()
    env = runtime.globals()
    # JSON as Argo CD hands it over: objects and arrays become tables (arrays 1-based), null is nil.
    env.obj = runtime.table_from(json.loads(json.dumps(obj)), recursive=True)
    result = runtime.execute(script(kind or obj["kind"]))
    out = {str(k): str(v) for k, v in dict(result).items()}
    assert set(out) <= {"status", "message"}, out
    return out


def captured() -> dict[str, dict[str, Any]]:
    return {path.stem: json.loads(path.read_text()) for path in sorted(CAPTURED.glob("*.json"))}


def for_capture(obj: dict[str, Any]) -> dict[str, Any]:
    """The object as saved: what the apiserver returned, less the fields that only add noise."""
    meta = {
        k: v
        for k, v in obj["metadata"].items()
        if k not in {"managedFields", "uid", "resourceVersion", "creationTimestamp"}
    }
    return {**obj, "metadata": meta}


_CUSTOMIZATIONS_HEADER = """\
# Argo CD health checks for the four mlops.dev kinds, as argocd-cm entries (README.md here).
# Server-side apply merges these keys into an existing argocd-cm and leaves its other keys alone:
#   kubectl apply --server-side --field-manager=mlops-operator -n argocd -f resource-customizations.yaml
# Generated from the *.lua files beside it by `python -m tests.argocd`; a unit test checks they agree.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
"""


def customization_key(kind: str) -> str:
    return f"resource.customizations.health.mlops.dev_{kind}"


def render_customizations() -> str:
    """resource-customizations.yaml: each kind's script as a literal block under its argocd-cm key."""
    parts = [_CUSTOMIZATIONS_HEADER]
    for kind in KINDS:
        lines = script(kind).splitlines()
        body = "".join(f"    {line}\n" if line.strip() else "\n" for line in lines)
        parts.append(f"  {customization_key(kind)}: |\n{body}")
    return "".join(parts)


if __name__ == "__main__":
    (ARGOCD / "resource-customizations.yaml").write_text(render_customizations())
