"""Conditions follow SetStatusCondition: transition time moves only when status moves."""

from __future__ import annotations

from mlops_operator.k8s.conditions import (
    ConditionUpdate,
    find_condition,
    is_true,
    now_rfc3339,
    set_condition,
    set_conditions,
)

T0, T1 = "2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z"


def test_new_condition_is_appended_with_time_and_generation():
    conds, changed = set_condition(
        [], ConditionUpdate("Ready", "False", "Pending", "waiting"), generation=3, now=T0
    )
    assert changed
    assert conds == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "Pending",
            "message": "waiting",
            "lastTransitionTime": T0,
            "observedGeneration": 3,
        }
    ]


def test_same_condition_again_changes_nothing():
    conds, _ = set_condition(
        [], ConditionUpdate("Ready", "False", "Pending", "waiting"), generation=3, now=T0
    )
    again, changed = set_condition(
        conds, ConditionUpdate("Ready", "False", "Pending", "waiting"), generation=3, now=T1
    )
    assert not changed
    assert again == conds


def test_reason_change_keeps_transition_time():
    conds, _ = set_condition([], ConditionUpdate("Ready", "False", "Pending"), generation=1, now=T0)
    conds, changed = set_condition(
        conds, ConditionUpdate("Ready", "False", "Validating"), generation=1, now=T1
    )
    assert changed
    assert conds[0]["reason"] == "Validating"
    assert conds[0]["lastTransitionTime"] == T0


def test_status_change_moves_transition_time():
    conds, _ = set_condition([], ConditionUpdate("Ready", "False", "Pending"), generation=1, now=T0)
    conds, changed = set_condition(conds, ConditionUpdate("Ready", "True", "Valid"), generation=1, now=T1)
    assert changed
    assert conds[0]["lastTransitionTime"] == T1


def test_generation_change_alone_is_a_change():
    conds, _ = set_condition([], ConditionUpdate("Ready", "True", "Valid"), generation=1, now=T0)
    conds, changed = set_condition(conds, ConditionUpdate("Ready", "True", "Valid"), generation=2, now=T1)
    assert changed
    assert conds[0]["observedGeneration"] == 2
    assert conds[0]["lastTransitionTime"] == T0


def test_order_is_kept_and_other_types_untouched():
    conds, _ = set_conditions(
        [],
        [ConditionUpdate("Ready", "False", "A"), ConditionUpdate("Progressing", "True", "B")],
        generation=1,
        now=T0,
    )
    conds, changed = set_conditions(
        conds, [ConditionUpdate("Progressing", "False", "Done")], generation=1, now=T1
    )
    assert changed
    assert [c["type"] for c in conds] == ["Ready", "Progressing"]
    assert conds[0]["lastTransitionTime"] == T0
    assert find_condition(conds, "Progressing")["reason"] == "Done"  # type: ignore[index]
    assert not is_true(conds, "Progressing")
    assert not is_true(conds, "Missing")


def test_now_is_rfc3339_utc_seconds():
    stamp = now_rfc3339()
    assert stamp.endswith("Z")
    assert len(stamp) == len("2026-01-01T00:00:00Z")
