"""Child names, labels, owner references; events never carry credentials."""

from __future__ import annotations

import re

import pytest

from mlops_operator.builders.training import job_name, service_name
from mlops_operator.k8s.events import redact
from mlops_operator.k8s.naming import child_name, common_labels, dns_label, label_value, owner_reference

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


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# Names the CRD accepts (DNS-1123 subdomains, up to 253 characters) that break naive child names.
EDGE_NAMES = [
    "digits-r1",
    "digits.v2.run",  # dots: not allowed in a Service name or a pod hostname
    "1st-run",  # a leading digit: not a DNS-1035 label
    "7",
    "a" * 253,
    "a" * 55 + "-" + "b" * 20,  # the first 56 characters end in "-"
    "x" * 61 + "." + "y" * 50,
    "a.b",
    "a-b",  # must not collide with "a.b"
]


@pytest.mark.parametrize("name", EDGE_NAMES)
def test_child_names_and_label_values_are_always_valid(name):
    for attempt in (1, 2, 20):
        job = job_name(name, attempt)
        assert DNS_LABEL.match(job), job
        # An Indexed Job's pod hostname is <job>-<index>: it must stay a DNS label up to index 255.
        assert len(f"{job}-255") <= 63
        assert job.endswith(f"-a{attempt}")
    service = service_name(name)
    assert DNS_1035.match(service), service
    assert len(service) <= 63
    for value in common_labels("TrainingRun", name).values():
        assert LABEL_VALUE.match(value), value
        assert len(value) <= 63


def test_names_that_had_to_change_cannot_collide():
    assert job_name("a.b", 1) != job_name("a-b", 1)
    assert service_name("1x") != service_name("x1x")
    long_a, long_b = "a" * 100 + "x", "a" * 100 + "y"
    assert job_name(long_a, 1) != job_name(long_b, 1)
    assert label_value(long_a) != label_value(long_b)
    assert job_name("digits-r1", 2) == "digits-r1-a2"  # a name that fits is kept as it is
    assert dns_label("digits-r1", "rdzv", dns1035=True) == "digits-r1-rdzv"
