"""Child names, labels, owner references; events never carry credentials."""

from __future__ import annotations

import re

import pytest

from mlops_operator.k8s.events import redact
from mlops_operator.k8s.naming import child_name, common_labels, owner_reference

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def test_short_names_are_plain_joins():
    assert child_name("digits-r1", "train") == "digits-r1-train"
    assert child_name("digits-r1", "attempt", "2") == "digits-r1-attempt-2"


def test_long_names_are_shortened_deterministically_and_stay_distinct():
    parent = "a" * 60
    one = child_name(parent, "train")
    two = child_name(parent, "compile")
    assert len(one) <= 63
    assert DNS_LABEL.match(one)
    assert one == child_name(parent, "train")
    assert one != two


def test_common_labels():
    labels = common_labels("TrainingRun", "r1", component="trainer")
    assert labels["mlops.dev/trainingrun"] == "r1"
    assert labels["app.kubernetes.io/managed-by"] == "mlops-operator"
    assert labels["app.kubernetes.io/component"] == "trainer"


def test_owner_reference_makes_the_owner_the_controller():
    body = {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "r1", "uid": "u-1"},
    }
    ref = owner_reference(body)
    assert ref == {
        "apiVersion": "mlops.dev/v1alpha1",
        "kind": "TrainingRun",
        "name": "r1",
        "uid": "u-1",
        "controller": True,
        "blockOwnerDeletion": True,
    }


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI/K7MDENG", "wJalrXUtnFEMI/K7MDENG"),
        ("failed with token: abc.def.ghi", "abc.def.ghi"),
        ('{"api_key": "0123456789abcdef"}', "0123456789abcdef"),
        ("key AKIAIOSFODNN7EXAMPLE rejected", "AKIAIOSFODNN7EXAMPLE"),
        ("password=hunter2, retrying", "hunter2"),
    ],
)
def test_redact_masks_credentials(text, leak):
    out = redact(text)
    assert leak not in out
    assert "***" in out


def test_redact_keeps_ordinary_messages():
    msg = "Dataset digits is not Ready: ContractViolated (2 objects, want at least 3)"
    assert redact(msg) == msg
