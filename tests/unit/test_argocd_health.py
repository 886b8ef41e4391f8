"""The Argo CD health checks (charts/mlops-operator/argocd/*.lua), executed on Lua 5.1 as Argo CD runs
them, on objects captured from the integration tests' real objects (tests/data/argocd/, written by
tests/integration/test_argocd_health.py with MLOPS_CAPTURE_ARGOCD=1), one per phase."""

from __future__ import annotations

import copy
import typing

import pytest
import yaml

from mlops_operator.api.v1alpha1.kinds import KINDS as API_KINDS
from mlops_operator.handlers.base import ENGINE_REASONS
from tests.argocd import (
    ARGOCD,
    EXPECTED,
    HEALTH,
    KINDS,
    argocd_runtime,
    assess,
    captured,
    customization_key,
    render_customizations,
    script,
)

COMMON = "-- ---- common to the four kinds' checks"


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_captured_object_has_the_expected_health(case: str) -> None:
    objects = captured()
    assert case in objects, f"tests/data/argocd/{case}.json is missing: capture it (module docstring)"
    obj = objects[case]
    assert obj["kind"].lower() == case.split("-", maxsplit=1)[0]
    status, fragment = EXPECTED[case]
    health = assess(obj)
    assert health["status"] == status, health
    assert fragment in health["message"], health


def test_every_captured_object_is_expected_and_real() -> None:
    objects = captured()
    assert set(objects) == set(EXPECTED)
    for case, obj in objects.items():
        # What the apiserver returned: set by the server, never written by hand.
        assert obj["apiVersion"] == "mlops.dev/v1alpha1"
        assert obj["metadata"]["generation"] >= 1, case
        assert obj["metadata"]["namespace"].startswith("t-"), case
        if "no-status" not in case:
            assert obj["status"]["conditions"], case
    assert {obj["kind"] for obj in objects.values()} == set(KINDS)


def _with(obj: dict[str, typing.Any], phase: str, ready: str, reason: str) -> dict[str, typing.Any]:
    out = copy.deepcopy(obj)
    generation = out["metadata"]["generation"]
    out["status"] = {
        "observedGeneration": generation,
        "phase": phase,
        "conditions": [
            {"type": "Ready", "status": ready, "reason": reason, "message": "m", "lastTransitionTime": "x"}
        ],
    }
    return out


@pytest.mark.parametrize("info", API_KINDS, ids=lambda i: i.kind)
def test_every_phase_of_the_api_has_a_health(info: typing.Any) -> None:
    base = captured()[f"{info.kind.lower()}-no-status"]
    phases = typing.get_args(info.status_model.model_fields["phase"].annotation)
    (literal,) = [p for p in phases if p is not type(None)]
    for phase in typing.get_args(literal):
        health = assess(_with(base, phase, "True", "SomeReason"))
        assert health["status"] in HEALTH, (phase, health)
        assert "unknown to this health check" not in health["message"], (info.kind, phase)
    unknown = assess(_with(base, "Sideways", "False", "Why"))
    assert unknown == {
        "status": "Progressing",
        "message": "phase Sideways is unknown to this health check; Why: m",
    }


@pytest.mark.parametrize("kind", KINDS)
def test_errors_of_the_engine_and_an_invalid_spec_are_degraded(kind: str) -> None:
    base = captured()[f"{kind.lower()}-no-status"]
    for reason in sorted({*ENGINE_REASONS, "InvalidSpec", "NotImplemented"}):
        assert assess(_with(base, "Pending", "False", reason)) == {
            "status": "Degraded",
            "message": f"{reason}: m",
        }


@pytest.mark.parametrize("kind", KINDS)
def test_a_status_without_observed_generation_is_not_trusted(kind: str) -> None:
    obj = _with(captured()[f"{kind.lower()}-no-status"], "Pending", "False", "X")
    del obj["status"]["observedGeneration"]
    health = assess(obj)
    assert health["status"] == "Progressing"
    assert "status is for generation none" in health["message"]


def test_the_four_scripts_share_one_common_part() -> None:
    tails = {kind: script(kind).split(COMMON, 1) for kind in KINDS}
    assert all(len(parts) == 2 for parts in tails.values()), "each script has the common marker"
    assert len({parts[1] for parts in tails.values()}) == 1


def test_resource_customizations_hold_exactly_the_scripts() -> None:
    text = (ARGOCD / "resource-customizations.yaml").read_text()
    assert text == render_customizations(), "stale: run `python -m tests.argocd`"
    doc = yaml.safe_load(text)
    assert (doc["kind"], doc["metadata"]["name"]) == ("ConfigMap", "argocd-cm")
    assert doc["data"] == {customization_key(kind): script(kind) for kind in KINDS}
    readme = (ARGOCD / "README.md").read_text()
    for kind in KINDS:
        assert customization_key(kind) in readme


@pytest.mark.parametrize(
    "code",
    [
        'return string.format("%d", 1)',
        'return ("Ready"):lower()',
        "return math.floor(1.5)",
        "return os.time()",
        "return io.write('x')",
        "return coroutine.create(print)",
        'return require("string")',
        "return table.foreach({}, print)",
    ],
)
def test_a_script_using_a_library_argo_cd_does_not_open_fails(code: str) -> None:
    """Argo CD opens package, base and table for a health script (util/lua/lua.go): the scripts
    are run with that set, so one that calls string.*, math.* or a string method fails here too."""
    with pytest.raises(Exception, match=r"nil value|attempt to index|not found"):
        argocd_runtime().execute(code)


def test_what_argo_cd_does_open_is_there() -> None:
    runtime = argocd_runtime()
    assert runtime.execute('return table.concat({"a", "b"}, "-") .. tostring(#"abc")') == "a-b3"
    assert runtime.execute('return type(require("os").date("!%Y"))') == "string"
    assert (
        runtime.execute("return type(pcall) .. type(ipairs) .. type(tonumber)") == "functionfunctionfunction"
    )


def test_a_health_script_that_uses_string_fails_as_it_would_in_argo_cd(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import tests.argocd

    lowered = 'return {status = "Healthy", message = string.lower(obj.status.phase)}'
    monkeypatch.setattr(tests.argocd, "script", lambda _kind: lowered)
    with pytest.raises(Exception, match=r"attempt to index global 'string'"):
        assess({"kind": "Dataset", "status": {"phase": "Ready"}})
