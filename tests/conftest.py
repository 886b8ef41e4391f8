"""Hooks for the whole run, loaded by the main pytest process too when the tests run on several
workers (pytest-xdist): what a test reports through its report's `user_properties` is gathered
here, whichever worker ran it.

The fault suite's time-to-heal records (tests/integration/faults) are printed at the end of the run
and written to `<pytest basetemp>/fault-heal-times.json`: the README's "Failure modes" table comes
from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

HEAL_PROPERTY = "mlops_fault_heal"
_HEALED: list[dict[str, Any]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "teardown":
        _HEALED.extend(value for name, value in report.user_properties if name == HEAL_PROPERTY)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    if not _HEALED or hasattr(config, "workerinput"):  # an xdist worker: the main process prints
        return
    path = Path(str(config._tmp_path_factory.getbasetemp())) / "fault-heal-times.json"  # type: ignore[attr-defined]
    path.write_text(json.dumps(_HEALED, indent=1))
    terminalreporter.section("fault suite: time to heal")
    terminalreporter.write_line("| fault | what the user sees | outage (s) | healed after (s) |")
    terminalreporter.write_line("|---|---|---|---|")
    for r in _HEALED:
        terminalreporter.write_line(
            f"| {r['fault']} | {r['user_sees']} | {r['outage_seconds']:.1f} | {r['heal_seconds']:.1f} |"
        )
    terminalreporter.write_line(f"(written to {path})")
