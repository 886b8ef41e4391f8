"""The README's Kueue recipe is what the real Kueue v0.17.0 accepts: every object of it passes the
apiserver's schema and Kueue's validating webhooks (a server-side dry run: nothing is created)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from mlops_operator.dev.controlplane import ControlPlane

README = Path(__file__).resolve().parents[2] / "README.md"


def recipe() -> list[dict[str, object]]:
    text = README.read_text()
    section = text[text.index("**With Kueue.**") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert block is not None, "the README's Kueue recipe has no yaml block"
    return [d for d in yaml.safe_load_all(block.group(1)) if d]


def test_the_readme_kueue_recipe_is_accepted_by_kueue(control_plane: ControlPlane) -> None:
    if not control_plane.kueue:
        pytest.skip("the session control plane runs without Kueue (hack/build-tools.sh builds it)")
    documents = recipe()
    assert sorted({str(d["kind"]) for d in documents}) == [
        "ClusterQueue",
        "LocalQueue",
        "ResourceFlavor",
        "WorkloadPriorityClass",
    ]
    control_plane.kubectl("create", "namespace", "perception", check=False)
    try:
        result = control_plane.kubectl_apply(documents, "--dry-run=server")
    finally:
        control_plane.kubectl("delete", "namespace", "perception", "--wait=false", check=False)
    assert result.stdout.count("(server dry run)") == len(documents), result.stdout
