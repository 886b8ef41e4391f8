"""The Dockerfile (not buildable here: no Docker engine) against the package and its CLI."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

from mlops_trainer import cli

IMAGE_DIR = Path(__file__).resolve().parents[2] / "trainer-image"
COMMANDS = {
    "train",
    "compile",
    "evaluate",
    "validate-data",
    "write-demo-data",
    "drift",
    "fetch-model-repository",
}


def _instructions() -> list[tuple[str, str]]:
    text = (IMAGE_DIR / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def _subcommands() -> set[str]:
    parser = cli.build_parser()
    (subparsers,) = [a for a in parser._actions if a.dest == "command"]
    return set(subparsers.choices)  # type: ignore[arg-type]


def test_entrypoint_is_the_console_script_and_cmd_a_real_subcommand() -> None:
    instructions = dict(_instructions())
    assert json.loads(instructions["ENTRYPOINT"]) == ["mlops-trainer"]
    cmd = json.loads(instructions["CMD"])
    assert cmd[0] in _subcommands()
    assert _subcommands() == COMMANDS
    scripts = tomllib.loads((IMAGE_DIR / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"mlops-trainer": "mlops_trainer.cli:main"}
    # The environment running these tests installed the same entry point.
    (installed,) = [ep for ep in entry_points(group="console_scripts") if ep.name == "mlops-trainer"]
    assert installed.load() is cli.main


def test_image_installs_this_package_from_a_pinned_base() -> None:
    instructions = _instructions()
    base = next(arg for kind, arg in instructions if kind == "ARG" and arg.startswith("BASE_IMAGE="))
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"nvcr\.io/nvidia/pytorch:\d{2}\.\d{2}-py3(@sha256:[0-9a-f]{64})?", image)
    # The build context is the repository root: the package and the contract it shares with the operator.
    copies = [arg.split() for kind, arg in instructions if kind == "COPY"]
    sources = {source for *given, _ in copies for source in given}
    assert {"contract", "trainer-image/pyproject.toml", "trainer-image/mlops_trainer"} <= sources
    for source in sources:
        assert (IMAGE_DIR.parent / source).exists(), f"COPY {source}: not in the repository"
    runs = " ".join(arg for kind, arg in instructions if kind == "RUN")
    assert "pip install --no-deps ./contract ." in runs
    assert "mlops-trainer --version" in runs
    # The context sent to the builder is the two packages, never the virtual environments beside them.
    text = (IMAGE_DIR / "Dockerfile.dockerignore").read_text()
    rules = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    assert all(rule.startswith(("!contract/", "!trainer-image/", "**/")) for rule in rules[1:])
    project = tomllib.loads((IMAGE_DIR / "pyproject.toml").read_text())["project"]
    # Every runtime dependency of the package (other than torch, which the base provides, and the
    # contract, installed from its folder) is installed.
    wanted = [
        re.split(r"[<>=\[ ]", d)[0]
        for d in project["dependencies"] + project["optional-dependencies"]["train"]
    ]
    assert "mlops-contract" in wanted
    for name in wanted:
        if name not in {"torch", "mlops-contract"}:
            assert re.search(rf'"{re.escape(name)}(-gpu)?[<>=]', runs), (
                f"{name} is not installed in the image"
            )


def test_console_script_answers_as_the_image_would_run_it() -> None:
    script = Path(sys.executable).with_name("mlops-trainer")
    out = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=True).stdout
    for command in COMMANDS:
        assert command in out
