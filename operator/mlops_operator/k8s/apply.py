"""Server-side apply of the children we own, under one field manager."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client

APPLY_PATCH = "application/apply-patch+yaml"  # JSON is YAML, so the JSON body the client sends is valid


def server_side_apply(api: client.ApiClient, manifest: Mapping[str, Any], field_manager: str) -> Any:
    """Apply a Job or Service; `force` takes over fields another manager last set (we own these)."""
    patchers = {
        "Job": client.BatchV1Api(api).patch_namespaced_job,
        "Service": client.CoreV1Api(api).patch_namespaced_service,
    }
    kind = manifest["kind"]
    if kind not in patchers:
        raise ValueError(f"no apply for kind {kind}")
    meta = manifest["metadata"]
    return patchers[kind](
        meta["name"],
        meta["namespace"],
        dict(manifest),
        field_manager=field_manager,
        force=True,
        _content_type=APPLY_PATCH,
    )
