"""operator/Dockerfile against the package, its CLI and the chart's security context.

No Docker engine runs here, so the image is not built: these tests read the Dockerfile and check that
what it installs and runs is what pyproject.toml declares and this environment installed (as
tests/trainer/test_image.py does for the trainer's image).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

from mlops_operator import cli
from mlops_operator.settings import OperatorConfig

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "operator" / "Dockerfile"
UID = "10001"  # the chart's runAsUser / runAsGroup


def _instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _stages() -> list[list[tuple[str, str]]]:
    stages: list[list[tuple[str, str]]] = [[]]
    for kind, arg in _instructions():
        if kind == "FROM":
            stages.append([])
        stages[-1].append((kind, arg))
    return stages[1:]


def _subcommands() -> set[str]:
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    return set(subparsers.choices)  # type: ignore[arg-type]


def test_entrypoint_is_the_console_script_running_the_operator() -> None:
    final = dict(_stages()[-1])
    assert json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"]) == ["mlopsctl", "run"]
    assert "run" in _subcommands()
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"mlopsctl": "mlops_operator.cli:main"}
    # The environment running these tests installed the same entry point.
    (installed,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "mlopsctl"]
    assert installed.load() is cli.main


def test_image_installs_the_package_and_the_contract_from_a_pinned_slim_base() -> None:
    instructions = _instructions()
    base = next(arg for kind, arg in instructions if kind == "ARG" and arg.startswith("BASE_IMAGE="))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.1[12]\.?\d*-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", image)
    # The Python of the image is one the package supports.
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.13"
    build, runtime = _stages()
    assert build[0] == ("FROM", "${BASE_IMAGE} AS build")
    assert runtime[0] == ("FROM", "${BASE_IMAGE}")
    # The build context is the repository root: the package, its metadata and the contract.
    copies = [arg.split() for kind, arg in build if kind == "COPY"]
    sources = {source for *given, _ in copies for source in given}
    assert {"contract", "pyproject.toml", "README.md", "operator/mlops_operator"} <= sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    runs = " ".join(arg for kind, arg in build if kind == "RUN")
    assert 'pip install ./contract ".${EXTRAS}"' in runs
    assert "mlopsctl --help" in runs
    assert "import mlops_contract, mlops_operator.main" in runs
    # The runtime stage takes only the virtual environment, with the console script on PATH.
    assert ("COPY", "--from=build /opt/mlops-operator /opt/mlops-operator") in runtime
    env = " ".join(arg for kind, arg in runtime if kind == "ENV")
    assert "PATH=/opt/mlops-operator/bin:$PATH" in env


def test_image_runs_as_a_numeric_non_root_user_on_a_read_only_root() -> None:
    runtime = _stages()[-1]
    (user,) = [arg for kind, arg in runtime if kind == "USER"]
    assert user == f"{UID}:{UID}"  # numeric: runAsNonRoot can check it without /etc/passwd
    runs = " ".join(arg for kind, arg in runtime if kind == "RUN")
    assert f"useradd --uid {UID} --gid {UID}" in runs
    env = " ".join(arg for kind, arg in runtime if kind == "ENV")
    # Nothing writes at runtime: no bytecode, no home; scratch only under /tmp (the chart's emptyDir).
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "HOME=/nonexistent" in env
    assert "TMPDIR=/tmp" in env
    (exposed,) = [arg for kind, arg in runtime if kind == "EXPOSE"]
    fields = OperatorConfig.model_fields
    assert exposed.split() == [str(fields["metrics_port"].default), str(fields["health_port"].default)]


def test_build_context_is_the_two_packages_only() -> None:
    text = (ROOT / "operator" / "Dockerfile.dockerignore").read_text()
    rules = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    allowed = ("!pyproject.toml", "!README.md", "!contract/", "!operator/mlops_operator/", "**/")
    assert all(rule.startswith(allowed) for rule in rules[1:]), rules
    for source in ("pyproject.toml", "README.md", "contract/src/", "operator/mlops_operator/"):
        assert f"!{source}" in rules
    assert "**/*.egg-info" in rules


def test_console_script_answers_as_the_image_would_run_it() -> None:
    script = Path(sys.executable).with_name("mlopsctl")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    assert "run" in out
