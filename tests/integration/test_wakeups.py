"""What wakes an object on the real control plane, beyond its own changes (issue 15, items 1 and 4).

- A Secret a resource names wakes it when it appears: with retries set to minutes, a Dataset created
  before its credentials Secret turns Ready within seconds of the Secret's creation.
- With the Secret watch off, the transient reason's backoff still brings it back (no event needed).
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from kubernetes import client

from mlops_operator.dev.controlplane import ControlPlane
from mlops_operator.dev.s3 import LocalS3
from tests.integration.conftest import _dataset_body, create_s3_secret, start_operator
from tests.waiting import wait_for

G, V = "mlops.dev", "v1alpha1"


def _ready(custom: client.CustomObjectsApi, namespace: str, name: str) -> dict[str, Any]:
    obj = custom.get_namespaced_custom_object(G, V, namespace, "datasets", name)
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == "Ready"), {})


def _bucket(s3: LocalS3) -> str:
    bucket = f"ml-{uuid.uuid4().hex[:10]}"
    s3.client().create_bucket(Bucket=bucket)
    s3.client().put_object(Bucket=bucket, Key="digits/part-0.npz", Body=b"x" * 64)
    return bucket


def test_a_secret_created_after_the_dataset_wakes_it_at_once(
    control_plane: ControlPlane,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    s3: LocalS3,
    tmp_path: Path,
) -> None:
    # Retries an hour apart: only the Secret's own event can make this Dataset Ready in time.
    env = {"MLOPS_RETRY_MIN_SECONDS": "3600", "MLOPS_RETRY_MAX_SECONDS": "3600"}
    operator = start_operator(control_plane, namespace, tmp_path / "operator.log", env)
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "datasets", _dataset_body(s3, _bucket(s3)))
        wait_for(
            lambda: _ready(custom, namespace, "digits").get("reason") == "SourceUnavailable",
            "the Dataset waiting for its Secret",
            30,
        )
        assert "s3-credentials" in _ready(custom, namespace, "digits")["message"]
        created = time.monotonic()
        create_s3_secret(core, namespace)
        # The Dataset's own retry is an hour away: Ready sooner can only be the Secret's event.
        wait_for(
            lambda: _ready(custom, namespace, "digits").get("status") == "True", "Ready after the Secret", 15
        )
        assert time.monotonic() - created < 15
    finally:
        operator.stop()


def test_without_the_secret_watch_the_backoff_brings_it_back(
    control_plane: ControlPlane,
    core: client.CoreV1Api,
    custom: client.CustomObjectsApi,
    namespace: str,
    s3: LocalS3,
    tmp_path: Path,
) -> None:
    env = {"MLOPS_WATCH_SECRETS": "false", "MLOPS_RETRY_MIN_SECONDS": "2", "MLOPS_RETRY_MAX_SECONDS": "4"}
    operator = start_operator(control_plane, namespace, tmp_path / "operator.log", env)
    try:
        custom.create_namespaced_custom_object(G, V, namespace, "datasets", _dataset_body(s3, _bucket(s3)))
        wait_for(
            lambda: _ready(custom, namespace, "digits").get("reason") == "SourceUnavailable",
            "the Dataset waiting for its Secret",
            30,
        )
        create_s3_secret(core, namespace)
        wait_for(lambda: _ready(custom, namespace, "digits").get("status") == "True", "Ready by backoff", 30)
    finally:
        operator.stop()
