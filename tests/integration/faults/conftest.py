"""The fault suite's fixtures: short backoffs for the operator, a proxy it can be cut off behind, and
a record of how long each fault took to heal (printed at the end of the run by tests/conftest.py and
written to `<pytest basetemp>/fault-heal-times.json`: the README's "Failure modes" table comes from it).

`MLOPS_FAULTS_OPERATOR_SRC=<dir>` runs the operators of this suite from another copy of the
operator's package directory (the `operator/` folder of an older commit, e.g. from `git archive`):
the way to show that a fault test fails on code without the fix.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.faults import TcpProxy, kubeconfig_through
from tests.conftest import HEAL_PROPERTY
from tests.integration.conftest import OperatorProcess, start_operator
from tests.integration.operator_rbac import operator_identity

# Retries and backoffs short enough that every fault heals in seconds (the settings exist for this).
FAST_ENV = {
    "MLOPS_RETRY_MIN_SECONDS": "0.5",
    "MLOPS_RETRY_MAX_SECONDS": "3",
    "MLOPS_START_DEADLINE_SECONDS": "60",
}
OPERATOR_SRC_ENV = "MLOPS_FAULTS_OPERATOR_SRC"
SEED_ENV = "MLOPS_FAULTS_SEED"


@dataclass(frozen=True)
class Healed:
    fault: str
    user_sees: str
    outage_seconds: float  # how long the fault lasted
    heal_seconds: float  # from the end of the fault until the end state was observed
    test: str


@pytest.fixture
def heal_record(request: pytest.FixtureRequest) -> Iterator[list[Healed]]:
    """Append a Healed to this list to have it reported (only tests that pass report): it travels in
    the test's report to tests/conftest.py, which prints the table whichever worker ran the test."""
    mine: list[Healed] = []
    yield mine
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.passed:
        request.node.user_properties.extend((HEAL_PROPERTY, asdict(r)) for r in mine)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def operator_env(**extra: str) -> dict[str, str]:
    env = {**FAST_ENV, **extra}
    if source := os.environ.get(OPERATOR_SRC_ENV):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
    return env


def start_fast_operator(
    control_plane: ControlPlane,
    namespace: str,
    log: Path,
    *,
    proxy: TcpProxy | None = None,
    **extra: str,
) -> OperatorProcess:
    """The operator with short backoffs, connected straight to the apiserver or through `proxy`."""
    kubeconfig = operator_identity(control_plane).grant(namespace)
    if proxy is not None:
        kubeconfig = kubeconfig_through(kubeconfig, proxy, log.with_suffix(".kubeconfig"))
    return start_operator(control_plane, namespace, log, operator_env(**extra), kubeconfig=kubeconfig)


def kill9(operator: OperatorProcess) -> None:
    """SIGKILL: no shutdown handlers, no last status patch, connections dropped mid-request."""
    operator.process.kill()
    operator.process.wait(timeout=10)


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the session's kube-apiserver (healed and closed after the test)."""
    with TcpProxy.to_url(control_plane.url) as running:
        yield running


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> random.Random:
    """Random points of a fault, reproducible: the seed is printed (and taken from MLOPS_FAULTS_SEED)."""
    seed = int(os.environ.get(SEED_ENV) or time.time_ns() % 1_000_000)
    print(f"{request.node.name}: {SEED_ENV}={seed}")
    return random.Random(seed)  # noqa: S311 - fault timing, not cryptography


@pytest.fixture
def healthy_control_plane(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The session's control plane, every component running again after the test, whatever it
    stopped: the tests after it need it whole."""
    try:
        yield control_plane
    finally:
        control_plane.restore()
