"""Scale benchmark of the TrainingRun controller on the local control plane (issue 8).

    .venv/bin/python bench/scale.py --runs 1000 [--idle-seconds 120] [--unrelated-pods 10000]
        [--operator-src PATH] [--threads 16] [--json out.json]

One control plane (real kube-apiserver/etcd/controller-manager/scheduler, kwok GPU nodes with one
GPU per run), one moto S3 server and one Ready Dataset; then, against that one apiserver:

1. Floor: a plain Python client (the kubernetes package, raw JSON, `--threads` threads) creates N
   TrainingRuns and, for each, the Job the operator would create (same shape and size, owned by the
   run) in a namespace no operator watches; the namespace is deleted again before the operator starts.
2. Operator: `mlopsctl run` (from `--operator-src`, default this checkout) under its own identity.
   The same client creates N TrainingRuns (same threads) in a watched namespace; a watch on Jobs times
   the first create until every run has its Job. Ratio = operator time / floor time (goal <= 1.5).
3. The operator's requests by verb and resource (the audit log records its get/list/watch too, at
   Metadata level; it is not rotated), CPU seconds, bytes received from the apiserver (`ss`: its TCP
   connections' bytes_received) and metric deltas, over an idle window while the N runs sit Running,
   and again once every pod is finished and every run Succeeded (goal: no writes, and reads that do
   not grow with N).
4. `--unrelated-pods` plain pods (not ours: no labels of ours, no GPU) in another namespace that the
   operator watches (as a cluster-wide operator would): while they are created and become Running,
   then over an idle window. What reaches the operator: the scope and label selector of its pod/Job
   watch and list requests (audit log); every pod/Job watch it holds, replayed with the same query,
   counting what the apiserver delivers; and the operator's bytes received.

The operator's peak RSS is the kernel's high-water mark (VmHWM); CPU is utime+stime. Every figure is
printed with the machine (cores, CPU model, memory) and the load average, since the machine may be
shared. The bench is not a test: it asserts nothing and exits 0 when it could measure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from mlops_operator.dev.controlplane import (
    KWOK_TOLERATION,
    OPERATOR_USER,
    ControlPlane,
    GpuNodePool,
    free_port,
)
from mlops_operator.dev.pods import terminated_status
from mlops_operator.dev.s3 import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, LOOPBACK_ENDPOINTS, LocalS3

ROOT = Path(__file__).resolve().parents[1]

GROUP, VERSION = "mlops.dev", "v1alpha1"
TR_PATH = f"/apis/{GROUP}/{VERSION}/namespaces/{{ns}}/trainingruns"
WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
NOISE_PREFIX = "noise-"
# What a trainer reports on success (trainer-result/v1), so the operator can mark runs Succeeded.
SUCCESS_MESSAGE = json.dumps(
    {
        "schema": "mlops.dev/trainer-result/v1",
        "command": "train",
        "status": "Succeeded",
        "retryable": False,
        "exitCode": 0,
        "reason": "Succeeded",
        "message": "",
        "metrics": {"accuracy": 0.97, "loss": 0.1},
        "steps": 10,
    }
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the machine and the operator process ----------------------------------------------------------


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
        platform.processor() or "unknown",
    )
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    mem_kib = int(next(line.split()[1] for line in meminfo if line.startswith("MemTotal:")))
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def machine_tag(info: dict[str, Any]) -> str:
    return f"{info['nproc']} cores {info['cpu_model']}, {info['memory_gib']} GiB"


def loadavg() -> float:
    return round(os.getloadavg()[0], 2)


@dataclass(frozen=True)
class ProcSample:
    at: float  # time.monotonic()
    cpu_seconds: float
    rss_bytes: int
    hwm_bytes: int


TICKS = os.sysconf("SC_CLK_TCK")


def sample_process(pid: int) -> ProcSample:
    """CPU (utime+stime, plus reaped children), RSS, its high-water mark and bytes read/written."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17.
    cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS
    status = {
        k: v.strip()
        for k, _, v in (ln.partition(":") for ln in Path(f"/proc/{pid}/status").read_text().splitlines())
    }
    rss = int(status.get("VmRSS", "0 kB").split()[0]) * 1024
    hwm = int(status.get("VmHWM", "0 kB").split()[0]) * 1024
    return ProcSample(time.monotonic(), cpu, rss, hwm)


def socket_bytes_received(pid: int, port: int) -> dict[str, int] | None:
    """bytes_received of each TCP connection `pid` holds to `port`, by local address (None: no `ss`).

    /proc/<pid>/io's rchar misses socket reads done with recv(), which is how asyncio (kopf) reads.
    """
    try:
        out = subprocess.run(
            ["ss", "-tinpH", "dport", "=", f":{port}"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found: dict[str, int] = {}
    local: str | None = None
    for line in out.splitlines():
        if not line[:1].isspace():
            columns = line.split()
            local = columns[3] if f"pid={pid}," in line and len(columns) > 3 else None
        elif local and (match := re.search(r"bytes_received:(\d+)", line)):
            found[local] = int(match[1])
    return found


class Sampler:
    """Samples the operator process every `interval` seconds (for per-phase RSS peaks)."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[ProcSample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, ValueError):
                self.samples.append(sample_process(self.pid))
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()

    def peak_rss(self, start: float, end: float) -> int:
        return max((s.rss_bytes for s in self.samples if start <= s.at <= end), default=0)


# -- a thin raw-JSON client (the typed models of the kubernetes package cost more than the calls) ---


class KubeError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: bytes) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300].decode(errors='replace')}")
        self.status = status


class Kube:
    """The kubernetes package's configured urllib3 pool (TLS, client certificate), spoken to in JSON."""

    def __init__(self, kubeconfig: Path, pool: int) -> None:
        from kubernetes import client, config  # noqa: PLC0415

        configuration = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        configuration.connection_pool_maxsize = pool
        self.host = configuration.host.rstrip("/")
        self.rest = client.ApiClient(configuration).rest_client

    def _call(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None,
        body: Any,
        *,
        content_type: str,
        timeout: float | tuple[float, float],
    ) -> Any:
        """The urllib3 response, body not read yet; raises KubeError unless 2xx."""
        url = self.host + path + (f"?{urlencode(query)}" if query else "")
        headers = {"Accept": "application/json", "Content-Type": content_type}
        response = self.rest.request(
            method, url, headers=headers, body=body, _request_timeout=timeout
        ).response
        if not 200 <= response.status < 300:
            raise KubeError(response.status, method, path, response.data)
        return response

    def request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 120,
    ) -> Any:
        response = self._call(method, path, query, body, content_type=content_type, timeout=timeout)
        data = response.data
        return json.loads(data) if data else None

    def status(self, method: str, path: str) -> int:
        try:
            self._call(method, path, None, None, content_type="application/json", timeout=30).data  # noqa: B018
        except KubeError as error:
            return error.status
        return 200

    def stream(self, path: str, query: dict[str, str], read_timeout: float) -> Any:
        """An open watch response (urllib3); iterate it with `lines()`."""
        return self._call(
            "GET", path, query, None, content_type="application/json", timeout=(10, read_timeout)
        )


def lines(response: Any) -> Iterator[bytes]:
    buffer = b""
    for chunk in response.stream(amt=None, decode_content=False):
        buffer += chunk
        while True:
            line, newline, rest = buffer.partition(b"\n")
            if not newline:
                break
            buffer = rest
            if line.strip():
                yield line


def close_response(response: Any) -> None:
    with contextlib.suppress(Exception):
        if hasattr(response, "shutdown"):
            response.shutdown()
        response.release_conn()


class Tracker:
    """List, then watch, a collection; `items[name] = value(obj, previous)` while the objects exist."""

    def __init__(
        self,
        kube: Kube,
        path: str,
        value: Callable[[dict[str, Any], Any], Any],
        query: dict[str, str] | None = None,
    ) -> None:
        self.kube, self.path, self.value, self.query = kube, path, value, dict(query or {})
        self.items: dict[str, Any] = {}
        self.events = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"watch {path}", daemon=True)

    def start(self) -> Tracker:
        self._rv = self._relist()
        self._thread.start()
        return self

    def _relist(self) -> str:
        listing = self.kube.request("GET", self.path, query=self.query)
        with self._lock:
            fresh = {}
            for obj in listing["items"]:
                name = obj["metadata"]["name"]
                fresh[name] = self.value(obj, self.items.get(name))
            self.items = fresh
        return str(listing["metadata"]["resourceVersion"])

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                query = {
                    **self.query,
                    "watch": "1",
                    "resourceVersion": self._rv,
                    "allowWatchBookmarks": "true",
                }
                query["timeoutSeconds"] = "900"
                self._response = self.kube.stream(self.path, query, read_timeout=960)
                for line in lines(self._response):
                    event = json.loads(line)
                    kind, obj = event["type"], event["object"]
                    if kind == "ERROR":
                        self._rv = self._relist()  # 410 Gone: start over from a fresh list
                        break
                    self._rv = obj["metadata"]["resourceVersion"]
                    if kind == "BOOKMARK":
                        continue
                    name = obj["metadata"]["name"]
                    with self._lock:
                        self.events += 1
                        if kind == "DELETED":
                            self.items.pop(name, None)
                        else:
                            self.items[name] = self.value(obj, self.items.get(name))
            except Exception as error:
                if self._stop.is_set():
                    return
                log(f"watch {self.path} broke ({type(error).__name__}: {error}); relisting")
                time.sleep(1)
                with contextlib.suppress(Exception):
                    self._rv = self._relist()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.items)

    def stop(self) -> None:
        self._stop.set()
        if self._response is not None:
            close_response(self._response)


@dataclass
class ReplayCount:
    """What a watch with the operator's own query delivers during a window."""

    uri: str
    events: int = 0
    unrelated_events: int = 0
    bytes: int = 0
    by_type: Counter[str] = field(default_factory=Counter)


class Replay:
    """Opens the same watch as the operator (same path, same selectors) and counts what it delivers."""

    def __init__(self, kube: Kube, uri: str, unrelated_namespace: str, seconds: float) -> None:
        self.kube, self.count = kube, ReplayCount(uri)
        parts = urlsplit(uri)
        self.path = parts.path
        dropped = {
            "resourceVersion",
            "resourceVersionMatch",
            "timeoutSeconds",
            "allowWatchBookmarks",
            "watch",
        }
        self.query = {k: v for k, v in parse_qsl(parts.query) if k not in dropped}
        self.needle = f'"namespace":"{unrelated_namespace}"'.encode()
        self.prefix = f'"name":"{NOISE_PREFIX}'.encode()
        self.seconds = seconds
        self._response: Any = None
        self._thread = threading.Thread(target=self._run, name=f"replay {uri}", daemon=True)

    def start(self) -> None:
        listing = self.kube.request("GET", self.path, query={**self.query, "limit": "1"})
        self._rv = str(listing["metadata"]["resourceVersion"])
        self._thread.start()

    def _run(self) -> None:
        query = {
            **self.query,
            "watch": "1",
            "resourceVersion": self._rv,
            "timeoutSeconds": str(int(self.seconds)),
        }
        with contextlib.suppress(Exception):
            self._response = self.kube.stream(self.path, query, read_timeout=self.seconds + 60)
            for line in lines(self._response):
                kind = line[9:30].split(b'"', 1)[0].decode(errors="replace")  # {"type":"ADDED",...
                self.count.events += 1
                self.count.bytes += len(line) + 1
                self.count.by_type[kind] += 1
                if self.needle in line and self.prefix in line:
                    self.count.unrelated_events += 1

    def stop(self) -> None:
        if self._response is not None:
            close_response(self._response)
        self._thread.join(timeout=5)


# -- the audit log ---------------------------------------------------------------------------------


def _timestamp(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


class Audit:
    def __init__(self, path: Path, user: str) -> None:
        self.path = path
        self.needle = f'"username":"{user}"'.encode()

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def inode(self) -> int:
        try:
            return self.path.stat().st_ino
        except FileNotFoundError:
            return 0

    def entries(self, offset: int = 0, *, also: bytes | None = None) -> Iterator[dict[str, Any]]:
        """The operator's entries from byte `offset` on (lines that also contain `also`, if given)."""
        with self.path.open("rb") as handle:
            handle.seek(offset)
            for line in handle:
                if self.needle in line and (also is None or also in line) and line.endswith(b"\n"):
                    yield json.loads(line)

    def open_watches(self, resources: set[str]) -> list[dict[str, Any]]:
        """The operator's watches on `resources` that have started and not yet ended."""
        started: dict[str, dict[str, Any]] = {}
        for entry in self.entries(also=b'"verb":"watch"'):
            if entry.get("verb") != "watch" or entry.get("objectRef", {}).get("resource") not in resources:
                continue
            if entry["stage"] == "ResponseStarted":
                started[entry["auditID"]] = entry
            elif entry["stage"] in ("ResponseComplete", "Panic"):
                started.pop(entry["auditID"], None)
        return list(started.values())


def resource_key(entry: dict[str, Any]) -> str:
    ref = entry.get("objectRef") or {}
    resource = ref.get("resource") or urlsplit(entry.get("requestURI", "")).path
    if ref.get("subresource"):
        resource += "/" + ref["subresource"]
    if ref.get("apiGroup"):
        resource += "." + ref["apiGroup"]
    return str(resource)


def selector_shape(selector: str) -> str:
    """`a=b,c in (x),!d` -> `a=*,c in (*),!d`: the keys a selector filters on, not the values."""
    if not selector:
        return "-"
    shapes = []
    for raw in selector.split(","):
        requirement = raw.strip()
        for op in ("!=", "==", "="):
            if op in requirement:
                shapes.append(requirement.split(op, 1)[0] + op + "*")
                break
        else:
            if " in " in requirement or " notin " in requirement:
                shapes.append(requirement.split("(", 1)[0] + "(*)")
            else:
                shapes.append(requirement)
    return ",".join(shapes)


def scope_key(entry: dict[str, Any], namespaces: dict[str, str]) -> str:
    """`watch pods ns=<runs> labelSelector=mlops.dev/trainingrun`: what a list/watch covers."""
    ref = entry.get("objectRef") or {}
    query = dict(parse_qsl(urlsplit(entry.get("requestURI", "")).query))
    namespace = ref.get("namespace")
    ns = namespaces.get(namespace, namespace) if namespace else "(all namespaces)"
    name = f" name={ref['name']}" if ref.get("name") else ""
    label = selector_shape(query.get("labelSelector", ""))
    fields = selector_shape(query.get("fieldSelector", ""))
    return f"{entry['verb']} {resource_key(entry)} ns={ns}{name} labelSelector={label} fieldSelector={fields}"


# -- the operator ----------------------------------------------------------------------------------


@dataclass
class Operator:
    process: subprocess.Popen[bytes]
    metrics_port: int
    log: Path

    def metrics(self) -> dict[str, float]:
        """Counter samples (`..._total`, `..._count`) from /metrics, by their full sample name."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10
            ) as response:
                text = response.read().decode()
        except OSError:
            return {}
        samples = {}
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            name, _, value = line.rpartition(" ")
            base = name.split("{", 1)[0]
            if base.endswith(("_total", "_count")) and not base.startswith(("python_", "process_")):
                with contextlib.suppress(ValueError):
                    samples[name] = float(value)
        return samples

    def log_lines(self) -> int:
        with self.log.open("rb") as handle:
            return sum(1 for _ in handle)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_operator(
    plane: ControlPlane, namespaces: list[str], src: Path | None, log_path: Path, extra_env: dict[str, str]
) -> Operator:
    """`mlopsctl run` as conftest starts it, minus MLOPS_TIMER_SECONDS (the default applies)."""
    metrics, health = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLOPS_")}
    env.update(
        {
            "KUBECONFIG": str(plane.operator_kubeconfig),
            "MLOPS_NAMESPACES": json.dumps(namespaces),
            "MLOPS_METRICS_PORT": str(metrics),
            "MLOPS_HEALTH_PORT": str(health),
            "MLOPS_LOG_FORMAT": "json",
            "MLOPS_WORKLOAD_TOLERATIONS": json.dumps([KWOK_TOLERATION]),
            "MLOPS_S3_ENDPOINT_ALLOWLIST": json.dumps(LOOPBACK_ENDPOINTS),
            **extra_env,
        }
    )
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlops_operator.cli", "run"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=str(src.parent if src else ROOT),
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited:\n{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/healthz", timeout=2) as response:
                if response.status == 200:
                    return Operator(process, metrics, log_path)
        except OSError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"the operator's /healthz never answered:\n{log_path.read_text()[-3000:]}")


# -- manifests -------------------------------------------------------------------------------------


def training_run(name: str, bucket: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingRun",
        "metadata": {"name": name},
        "spec": {
            "datasetRef": {"name": "digits"},
            "model": "digits-cnn",
            "hyperparameters": {"epochs": 1},
            "resources": {"gpusPerWorker": 1},
            "checkpoint": {"uri": f"s3://{bucket}/ckpt/{name}/", "intervalSteps": 10},
            "output": {"uri": f"s3://{bucket}/models/{name}/"},
        },
    }


def direct_job(run: dict[str, Any], namespace: str, bucket: str, endpoint: str) -> dict[str, Any]:
    """The Job the operator makes for a single-node, one-GPU run (same fields, same size), by hand."""
    name = run["metadata"]["name"]
    labels = {
        "app.kubernetes.io/name": "trainingrun",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "bench",
        "app.kubernetes.io/part-of": "mlops",
        "app.kubernetes.io/component": "trainer",
        "bench.mlops.dev/trainingrun": name,
        "bench.mlops.dev/attempt": "1",
    }
    secret = "s3-credentials"  # noqa: S105 - a Secret's name
    env = [
        {"name": "MLOPS_MODEL", "value": "digits-cnn"},
        {"name": "MLOPS_DATASET_URI", "value": f"s3://{bucket}/digits/"},
        {"name": "MLOPS_DATASET_FINGERPRINT", "value": "sha256:" + "0" * 64},
        {"name": "MLOPS_OUTPUT_URI", "value": f"s3://{bucket}/models/{name}/"},
        {"name": "MLOPS_HYPERPARAMETERS", "value": '{"epochs": 1}'},
        {"name": "MLOPS_RUN_NAME", "value": f"{namespace}-{name}"},
        {"name": "MLOPS_ATTEMPT", "value": "1"},
        {"name": "MLOPS_TERMINATION_MESSAGE_PATH", "value": "/dev/termination-log"},
        {"name": "HOME", "value": "/tmp"},  # noqa: S108 - an emptyDir in the pod
        {"name": "MLOPS_CHECKPOINT_URI", "value": f"s3://{bucket}/ckpt/{name}/"},
        {"name": "MLOPS_CHECKPOINT_INTERVAL_STEPS", "value": "10"},
        {"name": "AWS_ENDPOINT_URL_S3", "value": endpoint},
        {
            "name": "AWS_ACCESS_KEY_ID",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_ACCESS_KEY_ID"}},
        },
        {
            "name": "AWS_SECRET_ACCESS_KEY",
            "valueFrom": {"secretKeyRef": {"name": secret, "key": "AWS_SECRET_ACCESS_KEY"}},
        },
        {"name": "WANDB_MODE", "value": "disabled"},
    ]
    pod_spec = {
        "restartPolicy": "Never",
        "serviceAccountName": "default",
        "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 120,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [
            {
                "name": "trainer",
                "image": "ghcr.io/mlops-operator/trainer:0.1.0",
                "command": ["mlops-trainer"],
                "args": ["train"],
                "env": env,
                "resources": {"limits": {"nvidia.com/gpu": "1"}},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "FallbackToLogsOnError",
                "securityContext": {
                    "allowPrivilegeEscalation": False,
                    "readOnlyRootFilesystem": True,
                    "capabilities": {"drop": ["ALL"]},
                },
                "volumeMounts": [
                    {"name": "scratch", "mountPath": "/tmp"},  # noqa: S108
                    {"name": "shm", "mountPath": "/dev/shm"},  # noqa: S108
                ],
            }
        ],
        "volumes": [{"name": "scratch", "emptyDir": {}}, {"name": "shm", "emptyDir": {"medium": "Memory"}}],
        "tolerations": [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
            KWOK_TOLERATION,
        ],
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{name}-a1",
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [
                {
                    "apiVersion": f"{GROUP}/{VERSION}",
                    "kind": "TrainingRun",
                    "name": name,
                    "uid": run["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "backoffLimit": 0,
            "completions": 1,
            "parallelism": 1,
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
        },
    }


def noise_pod(name: str) -> dict[str, Any]:
    """A plain pod of somebody else's: no labels of ours, no GPU."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "someone-elses", "tier": "web"}},
        "spec": {
            "automountServiceAccountToken": False,
            "containers": [{"name": "web", "image": "registry.k8s.io/pause:3.10"}],
            "tolerations": [KWOK_TOLERATION],
            "nodeSelector": {"type": "kwok"},
        },
    }


# -- phases ----------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], bool], what: str, timeout: float, every: float = 1.0) -> float:
    """Seconds it took; raises TimeoutError after `timeout`."""
    started = time.monotonic()
    last_log = started
    while not predicate():
        now = time.monotonic()
        if now - started > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        if now - last_log > 30:
            log(f"  still waiting for {what} ({now - started:.0f}s)")
            last_log = now
        time.sleep(every)
    return time.monotonic() - started


def parallel(threads: int, count: int, task: Callable[[int], None]) -> tuple[float, int, list[str]]:
    """Run task(0..count-1) on `threads` threads: (seconds, failures, first error messages)."""
    failures: list[str] = []

    def guarded(i: int) -> None:
        try:
            task(i)
        except Exception as error:
            failures.append(f"{i}: {type(error).__name__}: {str(error)[:300]}")

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(guarded, range(count)))
    return time.monotonic() - started, len(failures), failures[:3]


def create_namespace(kube: Kube, name: str) -> None:
    kube.request("POST", "/api/v1/namespaces", body={"metadata": {"name": name}})

    def has_default_sa() -> bool:
        return kube.status("GET", f"/api/v1/namespaces/{name}/serviceaccounts/default") == 200

    wait_until(has_default_sa, f"the default ServiceAccount of {name}", 60, every=0.2)


@dataclass
class Window:
    name: str
    seconds: float
    loadavg_start: float
    loadavg_end: float
    cpu_seconds: float
    cpu_cores: float
    rss_mb_end: float
    rss_mb_peak: float
    received_mb: float | None  # from the apiserver, over connections open at the window's end
    log_lines: int
    requests: dict[str, int]
    writes: int
    reads: int
    status_codes: dict[str, int]
    scopes: dict[str, int]
    metric_deltas: dict[str, float]
    replays: list[dict[str, Any]] = field(default_factory=list)
    note: str = ""


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.machine = machine()
        self.tag = machine_tag(self.machine)
        self.id = uuid.uuid4().hex[:6]
        self.ns_direct = f"bench-direct-{self.id}"
        self.ns_runs = f"bench-runs-{self.id}"
        self.ns_noise = f"bench-noise-{self.id}"
        self.names = {self.ns_direct: "<direct>", self.ns_runs: "<runs>", self.ns_noise: "<unrelated>"}
        self.workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mlops-bench-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.report: dict[str, Any] = {"machine": self.machine, "args": vars(args), "errors": []}
        self.windows: list[Window] = []

    # ---- setup ----

    def start(self) -> None:
        args = self.args
        gpus = args.gpus_per_node
        nodes = max(2, math.ceil(args.runs * 1.05 / gpus))
        pods_per_node = max(110, math.ceil((args.runs + args.unrelated_pods) * 1.2 / nodes) + 16)
        self.report["cluster"] = {"nodes": nodes, "gpus_per_node": gpus, "pods_per_node": pods_per_node}
        log(f"control plane: {nodes} kwok nodes x {gpus} GPUs, {pods_per_node} pods each")
        self.plane = ControlPlane(
            node_pools=(GpuNodePool(count=nodes, gpus_per_node=gpus, pods=pods_per_node),),
            audit_read_users=(OPERATOR_USER,),
            controller_qps=args.controller_qps,
            # The audit log rotates at 100 MB by default, under the bench's feet: no rotation.
            apiserver_args=("--audit-log-maxsize=1000000",),
            startup_timeout=max(120, nodes * 2),
        )
        self.plane.start()
        crds = args.crds or (args.operator_src.parent / "crds" if args.operator_src else ROOT / "crds")
        self.plane.install_crds(Path(crds))
        self.report["cluster"]["crds"] = str(crds)
        self.kube = Kube(self.plane.kubeconfig, pool=args.threads + 16)
        self.audit = Audit(self.plane.audit_log, OPERATOR_USER)
        self.s3 = LocalS3()
        self.s3.start()
        self.bucket = f"bench-{self.id}"
        client = self.s3.client()
        client.create_bucket(Bucket=self.bucket)
        for i in range(2):
            client.put_object(Bucket=self.bucket, Key=f"digits/part-{i}.npz", Body=b"x" * 64)

    def stop(self) -> None:
        for name in ("operator", "sampler"):
            with contextlib.suppress(Exception):
                getattr(self, name).stop()
        if getattr(self, "plane", None) is not None:
            if self.args.keep_audit and self.plane.audit_log.exists():
                shutil.copy(self.plane.audit_log, self.workdir / "audit.log")
            self.plane.stop()
        if getattr(self, "s3", None) is not None:
            self.s3.stop()

    def secret_and_dataset(self, namespace: str) -> None:
        self.kube.request(
            "POST",
            f"/api/v1/namespaces/{namespace}/secrets",
            body={
                "metadata": {"name": "s3-credentials"},
                "stringData": {
                    "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
                    "AWS_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
                },
            },
        )
        dataset = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Dataset",
            "metadata": {"name": "digits"},
            "spec": {
                "source": {
                    "uri": f"s3://{self.bucket}/digits/",
                    "endpointURL": self.s3.endpoint_url,
                    "credentialsSecretRef": {"name": "s3-credentials"},
                }
            },
        }
        self.kube.request("POST", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/datasets", body=dataset)

    # ---- 1. the floor ----

    def direct(self) -> None:
        args, kube, ns = self.args, self.kube, self.ns_direct
        log(
            f"1/5 floor: a plain client creates {args.runs} TrainingRuns + Jobs "
            f"({args.threads} threads) in {ns}"
        )
        create_namespace(kube, ns)
        self.secret_and_dataset(ns)
        runs_path, jobs_path = TR_PATH.format(ns=ns), f"/apis/batch/v1/namespaces/{ns}/jobs"

        def create(i: int) -> None:
            run = kube.request("POST", runs_path, body=training_run(f"run-{i:05d}", self.bucket))
            kube.request("POST", jobs_path, body=direct_job(run, ns, self.bucket, self.s3.endpoint_url))

        seconds, failures, errors = parallel(args.threads, args.runs, create)
        self.report["direct"] = {
            "seconds": round(seconds, 2),
            "failures": failures,
            "errors": errors,
            "loadavg": loadavg(),
            "machine": self.tag,
        }
        log(f"  floor: {seconds:.2f}s ({failures} failures)")
        # Out of the way before the operator starts: its pods hold GPUs, its objects cost the GC time.
        started = time.monotonic()
        kube.request("DELETE", f"/api/v1/namespaces/{ns}")
        try:
            wait_until(
                lambda: kube.status("GET", f"/api/v1/namespaces/{ns}") == 404, f"{ns} to go", args.timeout
            )
        except TimeoutError as error:
            self.report["errors"].append(str(error))
        self.report["direct"]["cleanup_seconds"] = round(time.monotonic() - started, 1)

    # ---- 2. the operator ----

    def operator_creates(self) -> None:
        args, kube, ns = self.args, self.kube, self.ns_runs
        create_namespace(kube, ns)
        create_namespace(kube, self.ns_noise)
        self.secret_and_dataset(ns)
        namespaces = [] if args.cluster_wide else [ns, self.ns_noise]
        extra_env = dict(item.split("=", 1) for item in args.operator_env)
        src = args.operator_src
        self.report["operator"] = {
            "src": str(src or ROOT / "operator"),
            "commit": git_describe(src.parent if src else ROOT),
            "namespaces": namespaces or "cluster-wide",
            "env": extra_env,
            "log": str(self.workdir / "operator.log"),
        }
        log(f"2/5 operator from {self.report['operator']['src']} ({self.report['operator']['commit']})")
        self.operator = start_operator(self.plane, namespaces, src, self.workdir / "operator.log", extra_env)
        self.sampler = Sampler(self.operator.process.pid)
        self.sampler.start()
        self.started_sample = sample_process(self.operator.process.pid)

        def dataset_ready() -> bool:
            obj = kube.request("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{ns}/datasets/digits")
            return bool(obj.get("status", {}).get("phase") == "Ready")

        wait_until(dataset_ready, "the Dataset to be Ready", 120)
        time.sleep(2)
        self.jobs = Tracker(
            kube, f"/apis/batch/v1/namespaces/{ns}/jobs", lambda obj, old: old or time.monotonic()
        ).start()
        self.runs = Tracker(
            kube, TR_PATH.format(ns=ns), lambda obj, _: (obj.get("status") or {}).get("phase")
        ).start()
        before = sample_process(self.operator.process.pid)
        runs_path = TR_PATH.format(ns=ns)
        log(f"  creating {args.runs} TrainingRuns ({args.threads} threads)")
        started = time.monotonic()

        def create(i: int) -> None:
            kube.request("POST", runs_path, body=training_run(f"run-{i:05d}", self.bucket))

        create_seconds, failures, errors = parallel(args.threads, args.runs, create)
        log(f"  created in {create_seconds:.2f}s; waiting for every Job")
        try:
            wait_until(
                lambda: len(self.jobs.items) >= args.runs, f"{args.runs} Jobs", args.timeout, every=0.2
            )
        except TimeoutError as error:
            self.report["errors"].append(str(error))
        seen = sorted(self.jobs.snapshot().values())
        last = seen[args.runs - 1] if len(seen) >= args.runs else time.monotonic()
        seconds = last - started
        after = sample_process(self.operator.process.pid)
        floor = self.report["direct"]["seconds"]
        self.report["creation"] = {
            "operator_seconds": round(seconds, 2),
            "jobs_seen": len(seen),
            "create_runs_seconds": round(create_seconds, 2),
            "create_failures": failures,
            "create_errors": errors,
            "direct_seconds": floor,
            "ratio": round(seconds / floor, 2) if floor else None,
            "operator_cpu_seconds": round(after.cpu_seconds - before.cpu_seconds, 1),
            "operator_rss_mb_peak": round(self.sampler.peak_rss(started, time.monotonic()) / 2**20, 1),
            "loadavg": loadavg(),
            "machine": self.tag,
        }
        log(f"  every Job after {seconds:.2f}s (floor {floor:.2f}s)")

    # ---- 3. idle windows ----

    def window(self, name: str, seconds: float, action: Callable[[], str] | None = None) -> Window:
        pid = self.operator.process.pid
        time.sleep(0.5)
        offset, inode = self.audit.size(), self.audit.inode()
        metrics0, lines0 = self.operator.metrics(), self.operator.log_lines()
        load0 = loadavg()
        port = self.plane.apiserver_port
        sockets0 = socket_bytes_received(pid, port)
        wall0, s0 = time.time(), sample_process(pid)
        log(f"  window '{name}': {seconds:.0f}s")
        note = action() if action else ""
        remaining = s0.at + seconds - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)
        s1, wall1 = sample_process(pid), time.time()
        sockets1 = socket_bytes_received(pid, port)
        metrics1, lines1 = self.operator.metrics(), self.operator.log_lines()
        time.sleep(2)  # the audit backend writes entries as requests complete
        if self.audit.inode() != inode or self.audit.size() < offset:
            self.report["errors"].append(
                f"window '{name}': the audit log was rotated; request counts are short"
            )
        requests: Counter[str] = Counter()
        codes: Counter[str] = Counter()
        scopes: Counter[str] = Counter()
        writes = reads = 0
        for entry in self.audit.entries(offset):
            if not wall0 <= _timestamp(entry["requestReceivedTimestamp"]) <= wall1:
                continue
            verb = entry["verb"]
            # A watch counts once, when it starts; every other request when it completes.
            if entry["stage"] != ("ResponseStarted" if verb == "watch" else "ResponseComplete"):
                continue
            requests[f"{verb} {resource_key(entry)}"] += 1
            codes[str(entry.get("responseStatus", {}).get("code", "?"))] += 1
            if verb in WRITE_VERBS:
                writes += 1
            else:
                reads += 1
            if verb in ("list", "watch"):
                scopes[scope_key(entry, self.names)] += 1
        elapsed = s1.at - s0.at
        deltas = {k: round(v - metrics0.get(k, 0), 3) for k, v in metrics1.items() if v != metrics0.get(k, 0)}
        result = Window(
            name=name,
            seconds=round(elapsed, 1),
            loadavg_start=load0,
            loadavg_end=loadavg(),
            cpu_seconds=round(s1.cpu_seconds - s0.cpu_seconds, 2),
            cpu_cores=round((s1.cpu_seconds - s0.cpu_seconds) / elapsed, 3),
            rss_mb_end=round(s1.rss_bytes / 2**20, 1),
            rss_mb_peak=round(self.sampler.peak_rss(s0.at, s1.at) / 2**20, 1),
            received_mb=round(sum(v - sockets0.get(k, 0) for k, v in sockets1.items()) / 2**20, 2)
            if sockets0 is not None and sockets1 is not None
            else None,
            log_lines=lines1 - lines0,
            requests=dict(requests.most_common()),
            writes=writes,
            reads=reads,
            status_codes=dict(codes.most_common()),
            scopes=dict(scopes.most_common()),
            metric_deltas=deltas,
            note=note,
        )
        self.windows.append(result)
        return result

    def phase_counts(self) -> Counter[Any]:
        return Counter(self.runs.snapshot().values())

    def wait_phase(self, phase: str) -> None:
        n = self.args.runs

        def done() -> bool:
            return self.phase_counts().get(phase, 0) >= n

        try:
            took = wait_until(
                done, f"{n} runs {phase} (now {dict(self.phase_counts())})", self.args.timeout, 2
            )
            log(f"  all {n} runs {phase} after {took:.0f}s more")
        except TimeoutError as error:
            self.report["errors"].append(str(error))
            log(f"  {error}")

    def running_and_finished(self) -> None:
        args = self.args
        log("3/5 waiting until every run is Running")
        self.wait_phase("Running")
        time.sleep(args.settle_seconds)
        self.window("running", args.idle_seconds)
        log("4/5 finishing every pod (Succeeded, with a trainer result)")
        pods = self.kube.request("GET", f"/api/v1/namespaces/{self.ns_runs}/pods")["items"]
        running = [p for p in pods if p.get("status", {}).get("phase") == "Running"]

        def finish(i: int) -> None:
            pod = running[i]
            name = pod["metadata"]["name"]
            self.kube.request(
                "PATCH",
                f"/api/v1/namespaces/{self.ns_runs}/pods/{name}/status",
                body={"status": terminated_status(pod, 0, SUCCESS_MESSAGE)},
                content_type="application/strategic-merge-patch+json",
            )

        seconds, failures, errors = parallel(args.threads, len(running), finish)
        self.report["finish"] = {"pods": len(running), "seconds": round(seconds, 1), "failures": failures}
        if errors:
            self.report["errors"] += errors
        self.wait_phase("Succeeded")
        time.sleep(args.settle_seconds)
        self.window("finished", args.idle_seconds)

    # ---- 4. unrelated pods ----

    def unrelated(self) -> None:
        args, kube, ns = self.args, self.kube, self.ns_noise
        count = args.unrelated_pods
        log(f"5/5 {count} unrelated pods in {ns}")
        watches = self.audit.open_watches({"pods", "jobs"})
        self.report["operator_watches"] = sorted({scope_key(w, self.names) for w in watches})
        replays = [Replay(kube, w["requestURI"], ns, args.noise_timeout + args.idle_seconds) for w in watches]
        for replay in replays:
            replay.start()
        noise = Tracker(
            kube, f"/api/v1/namespaces/{ns}/pods", lambda obj, _: (obj.get("status") or {}).get("phase")
        ).start()

        def create_and_wait() -> str:
            path = f"/api/v1/namespaces/{ns}/pods"

            def create(i: int) -> None:
                kube.request("POST", path, body=noise_pod(f"{NOISE_PREFIX}{i:05d}"))

            seconds, failures, errors = parallel(args.threads, count, create)
            if errors:
                self.report["errors"] += errors
            log(f"  created in {seconds:.1f}s ({failures} failures); waiting until Running")

            def all_running() -> bool:
                return sum(1 for v in noise.snapshot().values() if v == "Running") >= count - failures

            try:
                took = wait_until(all_running, f"{count} unrelated pods Running", args.noise_timeout, 2)
            except TimeoutError as error:
                self.report["errors"].append(str(error))
                took = float("nan")
            return f"{count} pods created in {seconds:.1f}s, all Running {took:.0f}s later"

        churn = self.window("unrelated pods: created until Running", args.idle_seconds, create_and_wait)
        for replay in replays:
            replay.stop()
            churn.replays.append({**asdict(replay.count), "by_type": dict(replay.count.by_type)})
        noise.stop()
        time.sleep(args.settle_seconds)
        self.window("finished + unrelated pods, idle", args.idle_seconds)

    # ---- run it all ----

    def run(self) -> None:
        self.report["loadavg_at_start"] = loadavg()
        self.start()
        self.direct()
        self.operator_creates()
        self.running_and_finished()
        if self.args.unrelated_pods:
            self.unrelated()
        final = sample_process(self.operator.process.pid)
        self.report["operator"].update(
            {
                "peak_rss_mb": round(final.hwm_bytes / 2**20, 1),
                "cpu_seconds_total": round(final.cpu_seconds, 1),
                "cpu_seconds_since_dataset": round(final.cpu_seconds - self.started_sample.cpu_seconds, 1),
                "machine": self.tag,
            }
        )
        for tracker in ("jobs", "runs"):
            getattr(self, tracker).stop()
        # What the control plane itself holds: what limits N on this machine.
        plane: dict[str, Any] = {"audit_log_mb": round(self.audit.size() / 2**20, 1)}
        for component in self.plane.components:
            if component.process is not None and component.alive():
                with contextlib.suppress(OSError, ValueError):
                    sample = sample_process(component.process.pid)
                    plane[component.name] = {
                        "peak_rss_mb": round(sample.hwm_bytes / 2**20),
                        "cpu_seconds": round(sample.cpu_seconds),
                    }
        self.report["control_plane"] = plane


def git_describe(path: Path) -> str:
    try:
        head = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


# -- the report ------------------------------------------------------------------------------------


def format_report(report: dict[str, Any], windows: list[Window]) -> str:
    m, tag = report["machine"], machine_tag(report["machine"])
    args = report["args"]
    out = [
        f"machine: {tag}; kernel {m['kernel']}, python {m['python']}; load average at start "
        f"{report.get('loadavg_at_start')}",
    ]
    cluster = report.get("cluster", {})
    if cluster:
        out.append(
            f"cluster: {cluster['nodes']} kwok nodes x {cluster['gpus_per_node']} GPUs "
            f"({cluster['pods_per_node']} pods each), controller/scheduler QPS {args['controller_qps']}"
        )
    op = report.get("operator", {})
    if op:
        out.append(f"operator: {op['src']} ({op['commit']}), watching {op['namespaces']}")
    out.append(f"N = {args['runs']} single-node 1-GPU TrainingRuns, {args['threads']} client threads")
    creation = report.get("creation")
    if creation:
        out += [
            "",
            f"1. every run has its Job: operator {creation['operator_seconds']} s, plain client "
            f"{creation['direct_seconds']} s -> ratio {creation['ratio']} (goal <= 1.5)   [{tag}]",
            f"   (the client's own {args['runs']} TrainingRun creates took "
            f"{creation['create_runs_seconds']} s; "
            f"operator CPU meanwhile {creation['operator_cpu_seconds']} s, peak RSS "
            f"{creation['operator_rss_mb_peak']} MB; load average {creation['loadavg']})",
        ]
    if "peak_rss_mb" in op:
        out += [
            "",
            f"2. operator peak RSS {op['peak_rss_mb']} MB (VmHWM), CPU {op['cpu_seconds_total']} s in all "
            f"({op['cpu_seconds_since_dataset']} s from the Dataset Ready on)   [{tag}]",
        ]
    for i, w in enumerate(windows):
        label = "3." if i == 0 else ("4." if w.name.startswith("unrelated") else "  ")
        total = w.reads + w.writes
        out += [
            "",
            f"{label} window '{w.name}' ({w.seconds} s, load average "
            f"{w.loadavg_start}->{w.loadavg_end})   [{tag}]",
            f"   operator requests: {total} ({total / w.seconds:.1f}/s), writes {w.writes}, reads {w.reads}; "
            f"CPU {w.cpu_seconds} s ({w.cpu_cores} cores); RSS {w.rss_mb_end} MB (peak {w.rss_mb_peak}); "
            f"received {w.received_mb} MiB from the apiserver; {w.log_lines} log lines",
        ]
        if w.note:
            out.append(f"   {w.note}")
        out += [f"     {count:>8} {count / w.seconds:8.2f}/s  {key}" for key, count in w.requests.items()]
        if w.status_codes:
            out.append(f"   response codes: {w.status_codes}")
        if w.scopes:
            out.append("   list/watch scopes:")
            out += [f"     {count:>8}  {key}" for key, count in w.scopes.items()]
        if w.metric_deltas:
            shown = sorted(w.metric_deltas.items(), key=lambda kv: -abs(kv[1]))[:12]
            out.append("   metric deltas: " + ", ".join(f"{k} +{v:g}" for k, v in shown))
        if w.replays:
            out.append("   the operator's pod/Job watches, replayed with the same query over this window:")
            for r in w.replays:
                out.append(
                    f"     {r['events']} events ({r['unrelated_events']} of the unrelated pods, "
                    f"{r['bytes'] / 2**20:.1f} MiB) <- {r['uri']}"
                )
    if plane := report.get("control_plane"):
        parts = [
            f"{k} {v['peak_rss_mb']} MB / {v['cpu_seconds']} s CPU"
            for k, v in plane.items()
            if k != "audit_log_mb"
        ]
        out += ["", f"control plane peak RSS / CPU: {', '.join(parts)}; audit log {plane['audit_log_mb']} MB"]
    if report.get("operator_watches"):
        out += ["", "the operator's open pod/Job watches (scope and selector):"]
        out += [f"   {w}" for w in report["operator_watches"]]
    if report.get("errors"):
        out += ["", "errors/limits hit:"] + [f"   {e}" for e in report["errors"]]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1000, help="N TrainingRuns (single-node, 1 GPU)")
    parser.add_argument("--idle-seconds", type=float, default=120, help="length of each idle window")
    parser.add_argument(
        "--unrelated-pods", type=int, default=10000, help="plain pods in another namespace; 0 skips"
    )
    parser.add_argument("--operator-src", type=Path, help="the operator/ directory of another checkout")
    parser.add_argument("--crds", type=Path, help="CRD directory (default: the crds/ next to --operator-src)")
    parser.add_argument("--threads", type=int, default=16, help="client threads (the operator's pool is 16)")
    parser.add_argument("--gpus-per-node", type=int, default=64)
    parser.add_argument(
        "--controller-qps", type=float, default=200, help="client QPS of controller-manager and scheduler"
    )
    parser.add_argument("--settle-seconds", type=float, default=15, help="pause before each idle window")
    parser.add_argument(
        "--timeout", type=float, help="per-phase timeout (default: max(300 s, 0.6 s per run))"
    )
    parser.add_argument("--cluster-wide", action="store_true", help="operator watches all namespaces")
    parser.add_argument("--operator-env", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--workdir", type=Path, help="where the operator log (and --keep-audit) go")
    parser.add_argument("--keep-audit", action="store_true", help="copy the audit log into --workdir")
    parser.add_argument("--json", type=Path, help="also write the report as JSON")
    args = parser.parse_args(argv)
    if args.operator_src is not None:
        args.operator_src = args.operator_src.resolve()
    args.timeout = args.timeout or max(300.0, 0.6 * args.runs)
    args.noise_timeout = max(300.0, 0.1 * args.unrelated_pods)

    bench = Bench(args)
    log(f"machine: {bench.tag}; bench workdir {bench.workdir}")
    try:
        bench.run()
    except (Exception, KeyboardInterrupt) as error:
        bench.report["errors"].append(f"aborted: {type(error).__name__}: {error}")
        log(f"aborted: {type(error).__name__}: {error}")
    finally:
        bench.stop()
    bench.report["windows"] = [asdict(w) for w in bench.windows]
    text = format_report(bench.report, bench.windows)
    print(text)
    (bench.workdir / "report.txt").write_text(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(bench.report, indent=1, default=str) + "\n")
    return 0 if not any(e.startswith("aborted") for e in bench.report["errors"]) else 1


if __name__ == "__main__":
    sys.exit(main())
