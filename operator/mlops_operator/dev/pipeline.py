"""`mlopsctl dev`: the sample pipeline on a local control plane, start to finish.

Starts the control plane (simulated GPU nodes), the local S3 server and the operator, applies
`samples/`, waits until the operator has reconciled every object, and prints what `kubectl get
mlops` and the events show. With `keep`, everything stays up until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ..api.v1alpha1 import kind_by_name
from .controlplane import KWOK_TOLERATION, ControlPlane, GpuNodePool, free_port
from .s3 import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, LocalS3

SAMPLE_S3_PORT = 5000  # samples/01-dataset.yaml names http://127.0.0.1:5000


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _load_samples(samples: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(samples.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _wait_reconciled(plane: ControlPlane, namespace: str, docs: list[dict[str, Any]], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pending = []
        for doc in docs:
            out = plane.kubectl(
                "get",
                kind_by_name(doc["kind"]).plural,
                doc["metadata"]["name"],
                "-n",
                namespace,
                "-o",
                "json",
                check=False,
            )
            obj = json.loads(out.stdout) if out.returncode == 0 else {}
            if obj.get("status", {}).get("observedGeneration") != obj.get("metadata", {}).get("generation"):
                pending.append(doc["metadata"]["name"])
        if not pending:
            return True
        time.sleep(0.5)
    return False


def run(samples: Path, crds: Path, *, namespace: str = "mlops-demo", keep: bool = False) -> int:
    plane = ControlPlane(node_pools=(GpuNodePool(count=2, gpus_per_node=8),))
    s3 = LocalS3(port=SAMPLE_S3_PORT)
    operator: subprocess.Popen[bytes] | None = None
    try:
        _say("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
        plane.start()
        _say(f"control plane up in {plane.startup_seconds:.1f}s; kubeconfig: {plane.kubeconfig}")
        plane.install_crds(crds)
        _say(f"local S3 (moto) on {s3.endpoint_url}")
        s3.start()
        s3.client().create_bucket(Bucket="mlops-demo")
        plane.kubectl("create", "namespace", namespace)
        plane.kubectl(
            "create",
            "secret",
            "generic",
            "s3-credentials",
            "-n",
            namespace,
            f"--from-literal=AWS_ACCESS_KEY_ID={DEV_ACCESS_KEY_ID}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={DEV_SECRET_ACCESS_KEY}",
        )
        env = {
            **os.environ,
            "KUBECONFIG": str(plane.kubeconfig),
            "MLOPS_NAMESPACES": json.dumps([namespace]),
            "MLOPS_METRICS_PORT": str(free_port()),
            "MLOPS_HEALTH_PORT": str(free_port()),
            "MLOPS_WORKLOAD_TOLERATIONS": json.dumps([KWOK_TOLERATION]),
        }
        log = plane.workdir / "operator.log"
        _say(f"starting the operator (log: {log})")
        with log.open("wb") as out:
            operator = subprocess.Popen(
                [sys.executable, "-m", "mlops_operator.cli", "run"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        docs = _load_samples(samples)
        _say(f"applying {len(docs)} sample objects to namespace {namespace}")
        plane.kubectl_apply([{**d, "metadata": {**d["metadata"], "namespace": namespace}} for d in docs])
        ok = _wait_reconciled(plane, namespace, docs, timeout=120)
        print(plane.kubectl("get", "mlops", "-n", namespace, check=False).stdout, flush=True)
        print(plane.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout)
        if not ok:
            _say("the operator did not reconcile every sample in time; its log:")
            print(log.read_text()[-4000:])
            return 1
        _say("every sample object was reconciled")
        if keep:
            _say(f"kept running; in another shell: export KUBECONFIG={plane.kubeconfig}  (Ctrl-C stops)")
            while operator.poll() is None:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
        s3.stop()
        plane.stop()
