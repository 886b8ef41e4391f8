"""A real Kubernetes control plane on loopback, for tests and `mlopsctl dev`.

etcd, kube-apiserver (RBAC on, client-certificate auth), kube-controller-manager and kube-scheduler
run as child processes from binaries built by `hack/build-tools.sh`; kwok plays the kubelet of
simulated GPU nodes. Optionally, a real Argo Rollouts controller (`argo_rollouts=True`), a real
Prometheus (`prometheus=True`) and a real Kueue (`kueue=True`, with its webhooks) run beside them.
Everything lives in one temporary directory that `stop()` removes, and every process is stopped with
it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, cast

import yaml

from ..timeutil import from_rfc3339
from . import kueue as kueue_docs
from .pki import CertPair, LocalPKI
from .processes import Started
from .prometheus_sd import write_targets

BIN_DIR_ENV = "MLOPS_BIN_DIR"
TOOLS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok", "kubectl")
SERVICE_CIDR = "10.96.0.0/16"
OPERATOR_USER = "mlops-operator"  # the client certificate identity of `operator_kubeconfig` (system:masters)
# The ServiceAccount the Helm chart runs the operator as (release `mlops-operator` in `mlops-system`);
# the integration tests run the operator with its token and the chart's RBAC, and the apiserver names
# its requests with this username.
OPERATOR_NAMESPACE = "mlops-system"
OPERATOR_SERVICE_ACCOUNT = "mlops-operator"
OPERATOR_SA_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
# Record who wrote what (writes only), so tests can prove an idle operator writes nothing.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}
READ_VERBS = ("get", "list", "watch")
# The optional components' binaries (hack/build-tools.sh builds them too) and the Argo Rollouts CRDs.
ROLLOUTS_CONTROLLER = "rollouts-controller"
PROMETHEUS = "prometheus"
ARGO_ROLLOUTS_CRDS_DIR = "argo-rollouts-crds"
ROLLOUTS_USER = "argo-rollouts-controller"  # the rollouts-controller's client certificate identity
# The namespace the rollouts-controller reads its own ConfigMaps (notifications, plugins) from.
ROLLOUTS_NAMESPACE = "argo-rollouts"
# Kueue's manager, its CRDs and its webhook manifests (hack/build-tools.sh puts them side by side).
KUEUE = "kueue"
KUEUE_CRDS_DIR = "kueue-crds"
KUEUE_WEBHOOKS = "kueue-webhooks.yaml"
KUEUE_USER = "kueue-controller"  # the kueue manager's client certificate identity
# With internal cert management off, Kueue v0.17 reads its metrics serving certificate from this fixed
# path (cmd/kueue/main.go), and exits if it is missing. The control plane starts it in a mount
# namespace of its own (unshare) where /etc is an overlay holding our certificate there: nothing is
# written to the host's /etc.
KUEUE_METRICS_CERT_DIR = "/etc/kueue/metrics/certs"
_KUEUE_LAUNCH = f"""set -e
certs="$1"; scratch="$2"; shift 2
mount --make-rprivate /
mount -t tmpfs tmpfs "$scratch"
mkdir "$scratch/upper" "$scratch/work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$scratch/upper,workdir=$scratch/work" /etc
mkdir -p {KUEUE_METRICS_CERT_DIR}
cp "$certs/tls.crt" "$certs/tls.key" {KUEUE_METRICS_CERT_DIR}/
exec "$@"
"""
# The file SD job Prometheus scrapes serving pods' metrics endpoints under (`job="triton"`).
PROMETHEUS_SD_JOB = "triton"


def audit_policy_document(read_users: Sequence[str] = ()) -> dict[str, Any]:
    """AUDIT_POLICY, plus the reads (get/list/watch, Metadata level) of `read_users` when any are named:
    what `bench/scale.py` counts of the operator's requests."""
    if not read_users:
        return AUDIT_POLICY
    rules = cast("list[dict[str, Any]]", AUDIT_POLICY["rules"])
    read_rule = {"level": "Metadata", "users": list(read_users), "verbs": list(READ_VERBS)}
    return {**AUDIT_POLICY, "rules": [*rules[:-1], read_rule, rules[-1]]}


class ControlPlaneError(RuntimeError):
    """The control plane could not start; the message carries the failing component's log tail."""


def default_bin_dir() -> Path:
    """Where hack/build-tools.sh leaves the binaries (or $MLOPS_BIN_DIR)."""
    if env := os.environ.get(BIN_DIR_ENV):
        return Path(env)
    cache = Path(
        os.environ.get("MLOPS_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "mlops-operator"
    )
    return cache / "bin" / "current"


def find_binaries(bin_dir: Path | None = None, extra: Sequence[str] = ()) -> dict[str, Path]:
    directory = bin_dir or default_bin_dir()
    found = {tool: directory / tool for tool in (*TOOLS, *extra)}
    missing = [tool for tool, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise ControlPlaneError(
            f"missing {', '.join(missing)} in {directory}: run hack/build-tools.sh (or make tools) first"
        )
    return found


def kueue_built(bin_dir: Path | None = None) -> bool:
    """Whether hack/build-tools.sh has built Kueue (the manager, its CRDs, its webhooks) into the bin
    dir: ControlPlane(kueue=True) needs it; everything else runs without it."""
    directory = bin_dir or default_bin_dir()
    return (
        os.access(directory / KUEUE, os.X_OK)
        and (directory / KUEUE_CRDS_DIR).is_dir()
        and (directory / KUEUE_WEBHOOKS).is_file()
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Component:
    name: str
    argv: list[str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    env: Mapping[str, str] | None = None  # what it was started with: a restart uses it again

    def start(self, env: Mapping[str, str]) -> None:
        self.env = env
        with self.log.open("ab") as out:
            # A session of its own: stop() signals the whole group, so nothing is left behind.
            self.process = subprocess.Popen(
                self.argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def stop(self, timeout: float = 10) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the whole group: a crash, with no chance to close connections or flush."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


@dataclass(frozen=True)
class GpuNodePool:
    """Simulated nodes with `nvidia.com/gpu` capacity and the GPU product label."""

    count: int = 2
    gpus_per_node: int = 8
    gpu_product: str = "NVIDIA-H100-80GB-HBM3"
    cpu: str = "96"
    memory: str = "1Ti"
    name_prefix: str = "gpu-node"
    pods: int = 110  # the kubelet's default; raise it to pack many simulated pods on few nodes


def gpu_node_manifest(pool: GpuNodePool, index: int) -> dict[str, object]:
    """A Node object kwok will manage, tainted the way kwok's fake nodes conventionally are."""
    capacity = {
        "cpu": pool.cpu,
        "memory": pool.memory,
        "pods": str(pool.pods),
        "nvidia.com/gpu": str(pool.gpus_per_node),
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"{pool.name_prefix}-{index}",
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": f"{pool.name_prefix}-{index}",
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.product": pool.gpu_product,
                "nvidia.com/gpu.count": str(pool.gpus_per_node),
            },
        },
        "spec": {"taints": [{"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}]},
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def prometheus_config(sd_file: Path, scrape_interval: str = "1s") -> dict[str, Any]:
    """Prometheus' configuration: one file SD job (`job="triton"`) whose targets are the serving pods'
    metrics endpoints that the local pod runner (or a test) writes to `sd_file` (see prometheus_sd)."""
    return {
        "global": {
            "scrape_interval": scrape_interval,
            "scrape_timeout": scrape_interval,  # may not exceed the interval
            "evaluation_interval": scrape_interval,
        },
        "scrape_configs": [
            {
                "job_name": PROMETHEUS_SD_JOB,
                # Triton labels its series `model` and `version`, which the analysis queries select on:
                # a target label of the same name (a pod runner's `model`) must not overwrite them.
                "honor_labels": True,
                # Prometheus 3 refuses a response without a Content-Type unless told what to assume; a
                # small local process (a test's stand-in for Triton) may well send none.
                "fallback_scrape_protocol": "PrometheusText0.0.4",
                # The file is watched (inotify); the refresh is only a fallback for a missed event.
                "file_sd_configs": [{"files": [str(sd_file)], "refresh_interval": "5s"}],
            }
        ],
    }


def crd_name(path: Path) -> str:
    """metadata.name of a CRD file, read without parsing the YAML (Argo's are 500-650 kB each)."""
    match = re.search(r"^metadata:\n(?:[ ].*\n)*?  name: *(\S+)", path.read_text(), re.MULTILINE)
    if not match:
        raise ControlPlaneError(f"{path}: no metadata.name")
    return match.group(1).strip("'\"")


def listed_items(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The objects of `kubectl get KIND NAME... -o json`: one NAME prints the object itself, several
    (or none) a List. A `{range .items[*]}` jsonpath sees nothing in the first case."""
    if str(document.get("kind", "")).endswith("List"):
        return list(document.get("items") or [])
    return [dict(document)] if document else []


def condition_true(obj: Mapping[str, Any], type_: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == type_ and c.get("status") == "True" for c in conditions)


def all_conditions_true(document: Mapping[str, Any], names: Sequence[str], type_: str) -> bool:
    """Whether every object named in `names` is in `document` (kubectl's JSON of them) with condition
    `type_` True."""
    found = {str(o["metadata"]["name"]): o for o in listed_items(document)}
    return all(name in found and condition_true(found[name], type_) for name in names)


# Pods must tolerate this to land on the simulated nodes; the operator adds it only when configured
# to (MLOPS_WORKLOAD_TOLERATIONS), which `mlopsctl dev` and the tests do.
KWOK_TOLERATION = {"key": "kwok.x-k8s.io/node", "operator": "Equal", "value": "fake", "effect": "NoSchedule"}


@dataclass
class ControlPlane(Started):
    """Start with `start()` (or as a context manager); `kubeconfig` is an admin kubeconfig."""

    bin_dir: Path | None = None
    node_pools: Sequence[GpuNodePool] = (GpuNodePool(),)
    startup_timeout: float = 90
    # Users whose reads (get/list/watch) the audit log records too; by default it records writes only.
    audit_read_users: Sequence[str] = ()
    # Client rate limit (QPS, burst = 2x) of the controller-manager and the scheduler; None keeps
    # their defaults (20 and 50 QPS), which pace Job pods at thousands of objects.
    controller_qps: float | None = None
    # Extra kube-apiserver flags (e.g. --max-requests-inflight for a benchmark).
    apiserver_args: Sequence[str] = ()
    # A real Argo Rollouts controller (rollouts-controller) with its CRDs installed; off by default.
    argo_rollouts: bool = False
    # A real Prometheus scraping the targets of `prometheus_sd_file` every `prometheus_scrape_interval`
    # (1s: an analysis in a test sees a new sample each second); off by default.
    prometheus: bool = False
    prometheus_scrape_interval: str = "1s"
    # A real Kueue manager (its webhooks registered on loopback, Jobs with a queue-name label only) and
    # its CRDs; off by default. Needs `unshare` and overlayfs (see KUEUE_METRICS_CERT_DIR).
    kueue: bool = False
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlops-cp-")))
    components: list[Component] = field(default_factory=list)

    def __post_init__(self) -> None:
        optional = [
            n
            for n, on in (
                (ROLLOUTS_CONTROLLER, self.argo_rollouts),
                (PROMETHEUS, self.prometheus),
                (KUEUE, self.kueue),
            )
            if on
        ]
        self.binaries = find_binaries(self.bin_dir, optional)
        self.apiserver_port = free_port()
        self.url = f"https://127.0.0.1:{self.apiserver_port}"
        self.kubeconfig = self.workdir / "kubeconfig"
        # Known before start(), so a caller can write targets or render AnalysisTemplates early.
        self.prometheus_port = free_port() if self.prometheus else 0
        self.prometheus_url = f"http://127.0.0.1:{self.prometheus_port}" if self.prometheus else ""
        self.prometheus_sd_file = self.workdir / "prometheus" / "targets.json"
        self.rollouts_metrics_port = free_port() if self.argo_rollouts else 0
        self.rollouts_healthz_port = free_port() if self.argo_rollouts else 0
        self._rollouts_crds_apply: subprocess.Popen[str] | None = None
        self.kueue_serving = kueue_docs.KueueServing(
            webhook_port=free_port() if self.kueue else 0,
            health_port=free_port() if self.kueue else 0,
            metrics_port=free_port() if self.kueue else 0,
            cert_dir=str(self.workdir / "kueue" / "certs"),
        )
        self._kueue_crds_apply: subprocess.Popen[str] | None = None
        self.kueue_startup_seconds = 0.0
        # How to tell each component is up again after a restart (URL, TLS context), and which
        # components a fault has stopped on purpose (not a start-up failure).
        self._health: dict[str, tuple[str, ssl.SSLContext | None]] = {}
        self._stopped: set[str] = set()
        self._rollouts_uninstalled = False

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        started = time.monotonic()
        try:
            if self.prometheus:
                self._launch_prometheus()  # needs nothing else; its readiness is checked last
            self._start_components()
            self._create_nodes()
            if self.argo_rollouts:
                self._start_argo_rollouts()
            if self.kueue:
                self._start_kueue()
            if self.prometheus:
                self._wait_http(f"{self.prometheus_url}/-/ready", PROMETHEUS)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def stop(self) -> None:
        if self._rollouts_crds_apply is not None and self._rollouts_crds_apply.poll() is None:
            self._rollouts_crds_apply.kill()  # start-up failed while it ran
            self._rollouts_crds_apply.communicate()
        if self._kueue_crds_apply is not None and self._kueue_crds_apply.poll() is None:
            self._kueue_crds_apply.kill()
            self._kueue_crds_apply.communicate()
        for component in reversed(self.components):
            component.stop()
        self.components.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    # -- pieces ------------------------------------------------------------------------------

    def _start_components(self) -> None:
        pki = LocalPKI(self.workdir / "pki")
        serving = pki.issue(
            "apiserver",
            common_name="kube-apiserver",
            dns_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"),
            ips=("127.0.0.1", "10.96.0.1"),
            server=True,
        )
        admin = pki.issue("admin", common_name="mlops-admin", organizations=("system:masters",))
        kcm = pki.issue("kcm", common_name="system:kube-controller-manager")
        scheduler = pki.issue("scheduler", common_name="system:kube-scheduler")
        kwok = pki.issue("kwok", common_name="mlops-kwok", organizations=("system:masters",))
        # The operator's own identity, so the audit log tells its writes apart from the tests'.
        operator = pki.issue("operator", common_name=OPERATOR_USER, organizations=("system:masters",))
        # A dev control plane only: the rollouts-controller gets cluster-admin (system:masters) rather
        # than its chart's ClusterRole, which would have to be kept in step with each Argo release.
        rollouts = pki.issue("rollouts", common_name=ROLLOUTS_USER, organizations=("system:masters",))
        if self.kueue:  # the same for Kueue's manager (its chart's ClusterRole is Kueue's business)
            self._kueue_client = pki.issue("kueue", common_name=KUEUE_USER, organizations=("system:masters",))
            self._kueue_serving_cert = pki.issue(
                "kueue-serving",
                common_name="kueue-webhook",
                dns_names=("localhost",),
                ips=("127.0.0.1",),
                server=True,
            )
        sa = pki.service_account_keys()
        self.ca_cert = pki.ca_cert
        self.admin_cert = admin
        self._write_kubeconfig(self.kubeconfig, admin)
        kcm_config = self._write_kubeconfig(self.workdir / "kcm.kubeconfig", kcm)
        scheduler_config = self._write_kubeconfig(self.workdir / "scheduler.kubeconfig", scheduler)
        kwok_config = self._write_kubeconfig(self.workdir / "kwok.kubeconfig", kwok)
        self.operator_kubeconfig = self._write_kubeconfig(self.workdir / "operator.kubeconfig", operator)
        self.rollouts_kubeconfig = self._write_kubeconfig(self.workdir / "rollouts.kubeconfig", rollouts)
        self.audit_log = self.workdir / "audit.log"
        audit_policy = self.workdir / "audit-policy.yaml"
        audit_policy.write_text(yaml.safe_dump(audit_policy_document(self.audit_read_users)))

        etcd_client, etcd_peer = free_port(), free_port()
        b = {k: str(v) for k, v in self.binaries.items()}
        self._launch(
            "etcd",
            [
                b["etcd"],
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--name=default",
                # A throwaway cluster: durability is not worth the fsync latency.
                "--unsafe-no-fsync",
                "--quota-backend-bytes=2147483648",
                "--log-level=warn",
            ],
        )
        self._health["etcd"] = (f"http://127.0.0.1:{etcd_client}/health", None)
        self._wait_http(f"http://127.0.0.1:{etcd_client}/health", "etcd")
        self._launch(
            "kube-apiserver",
            [
                b["kube-apiserver"],
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={self.workdir / 'apiserver-certs'}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--client-ca-file={pki.ca_cert}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={sa.cert}",
                f"--service-account-signing-key-file={sa.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                # The loopback address may not back the `kubernetes` Service's endpoints; skip them.
                "--endpoint-reconciler-type=none",
                "--enable-priority-and-fairness=false",
                "--storage-backend=etcd3",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={self.audit_log}",
                "--audit-log-format=json",
                "--v=0",
                *self.apiserver_args,
            ],
        )
        self._health["kube-apiserver"] = (f"{self.url}/readyz", self._ssl_context(admin))
        self._wait_http(f"{self.url}/readyz", "kube-apiserver", self._ssl_context(admin))
        if self.argo_rollouts:
            self._begin_rollouts_crds()
        if self.kueue:
            self._begin_kueue_crds()
        common_flags = ["--leader-elect=false", "--v=0"]
        if self.controller_qps is not None:
            qps = self.controller_qps
            common_flags += [f"--kube-api-qps={qps:g}", f"--kube-api-burst={int(2 * qps)}"]
        self._launch(
            "kube-controller-manager",
            [
                b["kube-controller-manager"],
                f"--kubeconfig={kcm_config}",
                f"--authentication-kubeconfig={kcm_config}",
                f"--authorization-kubeconfig={kcm_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'kcm-certs'}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-account-private-key-file={sa.key}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--use-service-account-credentials=true",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service,-route",
                # Evict pods from unreachable simulated nodes quickly, as a real cluster would.
                "--node-monitor-grace-period=40s",
                *common_flags,
            ],
        )
        self._launch(
            "kube-scheduler",
            [
                b["kube-scheduler"],
                f"--kubeconfig={scheduler_config}",
                f"--authentication-kubeconfig={scheduler_config}",
                f"--authorization-kubeconfig={scheduler_config}",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                *common_flags,
            ],
        )
        kwok_stages = self.workdir / "kwok.yaml"
        kwok_stages.write_text(resources.files(__package__).joinpath("kwok.yaml").read_text())
        self._launch(
            "kwok",
            [
                b["kwok"],
                f"--kubeconfig={kwok_config}",
                f"--config={kwok_stages}",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )
        self._wait_for_controllers()

    def _begin_rollouts_crds(self) -> None:
        """Start the server-side apply of Argo Rollouts' CRDs (3 MB: too large for the last-applied
        annotation of a client-side apply) as soon as the apiserver answers: the apiserver takes
        seconds over them, which overlaps the rest of start-up this way."""
        files = sorted((self.binaries[ROLLOUTS_CONTROLLER].parent / ARGO_ROLLOUTS_CRDS_DIR).glob("*.yaml"))
        if not files:
            raise ControlPlaneError(f"no Argo Rollouts CRDs next to {self.binaries[ROLLOUTS_CONTROLLER]}")
        self._rollouts_crd_names = [crd_name(f) for f in files]
        self._rollouts_crds_apply = self._apply_in_background(files)

    def _apply_in_background(self, files: Sequence[Path]) -> subprocess.Popen[str]:
        """`kubectl apply --server-side` of `files`, left running: the caller collects it."""
        return subprocess.Popen(
            [
                str(self.binaries["kubectl"]),
                f"--kubeconfig={self.kubeconfig}",
                "apply",
                "--server-side",
                "--field-manager=mlops-dev",
                *[f"-f={f}" for f in files],
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    def _start_argo_rollouts(self) -> None:
        """Once its CRDs are Established, the rollouts-controller: all namespaces, no leader election;
        up once its /healthz answers (its informers sync right after, well before a test's first
        Rollout could be created and missed: they list what exists when they start)."""
        self._finish_rollouts_crds()
        self._launch(
            ROLLOUTS_CONTROLLER,
            [
                str(self.binaries[ROLLOUTS_CONTROLLER]),
                f"--kubeconfig={self.rollouts_kubeconfig}",
                "--leader-elect=false",
                f"--metricsPort={self.rollouts_metrics_port}",
                f"--healthzPort={self.rollouts_healthz_port}",
                "--loglevel=warn",
            ],
            # It reads its ConfigMaps from $POD_NAMESPACE (else from a pod's service-account mount).
            env={"POD_NAMESPACE": ROLLOUTS_NAMESPACE},
        )
        self._health[ROLLOUTS_CONTROLLER] = (f"http://127.0.0.1:{self.rollouts_healthz_port}/healthz", None)
        self._wait_http(f"http://127.0.0.1:{self.rollouts_healthz_port}/healthz", ROLLOUTS_CONTROLLER)

    def _finish_rollouts_crds(self) -> None:
        assert self._rollouts_crds_apply is not None
        _, errors = self._rollouts_crds_apply.communicate(timeout=self.startup_timeout)
        if self._rollouts_crds_apply.returncode != 0:
            raise ControlPlaneError(f"applying the Argo Rollouts CRDs failed: {errors.strip()}")
        self._wait_conditions("crd", self._rollouts_crd_names, "Established", "kube-apiserver")

    def _begin_kueue_crds(self) -> None:
        """Start the server-side apply of Kueue's CRDs (the Workload CRD alone is 1.4 MB) as soon as
        the apiserver answers, as for Argo Rollouts'."""
        files = sorted((self.binaries[KUEUE].parent / KUEUE_CRDS_DIR).glob("*.yaml"))
        if not files:
            raise ControlPlaneError(f"no Kueue CRDs next to {self.binaries[KUEUE]}")
        self._kueue_crd_names = [crd_name(f) for f in files]
        self._kueue_crds_apply = self._apply_in_background(files)

    def _start_kueue(self) -> None:
        """Kueue's manager once its CRDs are Established (their conversion webhook pointed at it):
        internal cert management off, its webhook server on loopback with our serving certificate, no
        leader election; then, once its /readyz says the webhook server is up, its Mutating- and
        ValidatingWebhookConfiguration (upstream's, by URL). Up when both are registered."""
        started = time.monotonic()
        assert self._kueue_crds_apply is not None
        _, errors = self._kueue_crds_apply.communicate(timeout=self.startup_timeout)
        if self._kueue_crds_apply.returncode != 0:
            raise ControlPlaneError(f"applying the Kueue CRDs failed: {errors.strip()}")
        ca_pem = self.ca_cert.read_bytes()
        port = self.kueue_serving.webhook_port
        patch = json.dumps(kueue_docs.conversion_patch(port, ca_pem))
        for name in kueue_docs.CONVERSION_CRDS:
            if name in self._kueue_crd_names:
                self.kubectl("patch", "crd", name, "--type=merge", "-p", patch)
        self._wait_conditions("crd", self._kueue_crd_names, "Established", "kube-apiserver")
        directory = self.workdir / "kueue"
        certs = Path(self.kueue_serving.cert_dir)
        certs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self._kueue_serving_cert.cert, certs / "tls.crt")
        shutil.copyfile(self._kueue_serving_cert.key, certs / "tls.key")
        (certs / "tls.key").chmod(0o600)
        (directory / "scratch").mkdir()
        config = directory / "config.yaml"
        config.write_text(yaml.safe_dump(kueue_docs.manager_config(self.kueue_serving)))
        kubeconfig = self._write_kubeconfig(directory / "kueue.kubeconfig", self._kueue_client)
        unshare = shutil.which("unshare")
        if unshare is None:
            raise ControlPlaneError("Kueue needs `unshare` (util-linux): see KUEUE_METRICS_CERT_DIR")
        self._launch(
            KUEUE,
            [
                unshare,
                "--mount",
                *(["--map-root-user"] if os.geteuid() != 0 else []),
                "--",
                "/bin/sh",
                "-c",
                _KUEUE_LAUNCH,
                "kueue-launch",
                str(certs),
                str(directory / "scratch"),
                str(self.binaries[KUEUE]),
                f"--config={config}",
                f"--kubeconfig={kubeconfig}",
            ],
        )
        ready = f"http://127.0.0.1:{self.kueue_serving.health_port}/readyz"
        self._health[KUEUE] = (ready, None)
        self._wait_http(ready, KUEUE)
        webhooks = yaml.safe_load_all((self.binaries[KUEUE].parent / KUEUE_WEBHOOKS).read_text())
        self.kubectl_apply(kueue_docs.loopback_webhooks(list(webhooks), port, ca_pem))
        self.kueue_startup_seconds = time.monotonic() - started

    def _launch_prometheus(self) -> None:
        directory = self.prometheus_sd_file.parent
        directory.mkdir(parents=True, exist_ok=True)
        write_targets(self.prometheus_sd_file, [])
        config = directory / "prometheus.yml"
        config.write_text(
            yaml.safe_dump(prometheus_config(self.prometheus_sd_file, self.prometheus_scrape_interval))
        )
        self._launch(
            PROMETHEUS,
            [
                str(self.binaries[PROMETHEUS]),
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.prometheus_port}",
                "--storage.tsdb.retention.time=1d",
                "--log.level=warn",
            ],
        )
        self._health[PROMETHEUS] = (f"{self.prometheus_url}/-/ready", None)

    def _launch(self, name: str, argv: list[str], env: Mapping[str, str] | None = None) -> None:
        component = Component(name, argv, self.workdir / f"{name}.log")
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("KUBECONFIG", "KUBERNETES_"))}
        environment["HOME"] = str(self.workdir)  # kwok reads ~/.kwok; keep it out of the user's home
        environment.update(env or {})
        component.start(environment)
        self.components.append(component)

    def _component(self, name: str) -> Component:
        return next(c for c in self.components if c.name == name)

    def _failure(self, name: str, what: str) -> ControlPlaneError:
        dead = [c for c in self.components if not c.alive() and c.name not in self._stopped]
        culprit = dead[0] if dead else self._component(name)
        return ControlPlaneError(
            f"{what} (workdir {self.workdir}); last lines of {culprit.name}'s log:\n{culprit.tail()}"
        )

    def _deadline_loop(self, name: str, what: str) -> Iterator[None]:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if any(not c.alive() and c.name not in self._stopped for c in self.components):
                raise self._failure(name, f"{name} exited while waiting for {what}")
            yield
            time.sleep(0.2)
        raise self._failure(name, f"timed out after {self.startup_timeout:.0f}s waiting for {what}")

    def _ssl_context(self, client: CertPair) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        context.load_cert_chain(str(client.cert), str(client.key))
        return context

    def _wait_http(self, url: str, name: str, context: ssl.SSLContext | None = None) -> None:
        for _ in self._deadline_loop(name, f"{url} to answer ok"):
            try:
                with urllib.request.urlopen(url, timeout=2, context=context) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except OSError:
                continue

    def _wait_for_controllers(self) -> None:
        """The controller-manager is up once it has made the default ServiceAccount; the scheduler
        once its /healthz answers."""
        for _ in self._deadline_loop("kube-controller-manager", "the default ServiceAccount"):
            if self.kubectl("get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0:
                break
        port = next(a for a in self._component("kube-scheduler").argv if a.startswith("--secure-port="))
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the scheduler serves a self-signed cert of its own
        self._wait_http(f"https://127.0.0.1:{port.split('=')[1]}/healthz", "kube-scheduler", context)

    def _write_kubeconfig(self, path: Path, client: CertPair) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mlops-dev",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": path.stem,
                    "user": {"client-certificate": str(client.cert), "client-key": str(client.key)},
                }
            ],
            "contexts": [{"name": "mlops-dev", "context": {"cluster": "mlops-dev", "user": path.stem}}],
            "current-context": "mlops-dev",
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    def _create_nodes(self) -> None:
        nodes = [gpu_node_manifest(pool, i) for pool in self.node_pools for i in range(pool.count)]
        if not nodes:
            return
        self.kubectl_apply(nodes)
        names = [str(n["metadata"]["name"]) for n in nodes]  # type: ignore[index]
        self._wait_conditions("nodes", names, "Ready", "kwok")

    def _wait_conditions(self, kind: str, names: Sequence[str], type_: str, component: str) -> None:
        """Until every object `names` names has condition `type_` True (one name works as several)."""
        for _ in self._deadline_loop(component, f"{kind} {', '.join(names)} to be {type_}"):
            result = self.kubectl("get", kind, *names, "-o", "json", check=False)
            if result.returncode == 0 and all_conditions_true(json.loads(result.stdout), names, type_):
                return

    # -- faults: components stopped and started again, as an outage would (tests/integration/faults)

    def stop_component(self, name: str, *, kill: bool = False, grace: float = 10) -> None:
        """Stop one component (SIGTERM, SIGKILL after `grace` seconds; at once with `kill`); the rest
        keep running. Its data directory, ports and arguments stay: start_component() brings the same
        one back."""
        component = self._component(name)
        self._stopped.add(name)
        if kill:
            component.kill()
        else:
            component.stop(timeout=grace)

    def start_component(self, name: str) -> float:
        """Start a stopped component again, exactly as before, and wait until it answers (after etcd,
        until the apiserver is ready again too); the seconds that took."""
        started = time.monotonic()
        component = self._component(name)
        if not component.alive():
            component.start(component.env or {})
        self._stopped.discard(name)
        self._wait_healthy(name)
        if name == "etcd":
            self._wait_healthy("kube-apiserver")
        return time.monotonic() - started

    def restart_component(
        self, name: str, *, kill: bool = False, down_for: float = 0, grace: float = 10
    ) -> float:
        """Stop `name`, leave it down `down_for` seconds, start it again; the seconds from the stop
        until it (and what depends on it) answers again."""
        started = time.monotonic()
        self.stop_component(name, kill=kill, grace=grace)
        try:
            time.sleep(down_for)
        finally:
            self.start_component(name)
        return time.monotonic() - started

    def restart_apiserver(self, *, kill: bool = False, down_for: float = 0) -> float:
        """kube-apiserver stopped and started again (same port, certificates, flags): every watch
        and connection to it breaks; its watch cache starts afresh from etcd. It stops listening
        at once on SIGTERM but then lingers (10 s here) over its shutdown: 3 s of grace, then SIGKILL."""
        return self.restart_component("kube-apiserver", kill=kill, down_for=down_for, grace=3)

    def restart_etcd(self, *, kill: bool = False, down_for: float = 0) -> float:
        """etcd stopped and started again on the same data directory: the apiserver keeps running
        but can neither read nor write meanwhile; returns once the apiserver is ready again."""
        return self.restart_component("etcd", kill=kill, down_for=down_for)

    def stop_prometheus(self) -> None:
        self.stop_component(PROMETHEUS)

    def start_prometheus(self) -> float:
        return self.start_component(PROMETHEUS)

    def stop_rollouts_controller(self) -> None:
        self.stop_component(ROLLOUTS_CONTROLLER)

    def start_rollouts_controller(self) -> float:
        return self.start_component(ROLLOUTS_CONTROLLER)

    def stop_kueue(self) -> None:
        """Kueue's manager down (its webhooks stay registered, as in a cluster whose Kueue pod is
        gone: Job creates then fail, failurePolicy Fail)."""
        self.stop_component(KUEUE)

    def start_kueue(self) -> float:
        return self.start_component(KUEUE)

    def uninstall_argo_rollouts(self) -> None:
        """As `kubectl delete -f install.yaml` does: the controller stops and its CRDs go, and with
        them every Rollout, AnalysisTemplate and AnalysisRun in the cluster."""
        if not self.argo_rollouts:
            raise ControlPlaneError("this control plane runs without Argo Rollouts")
        self.stop_component(ROLLOUTS_CONTROLLER)
        self._rollouts_uninstalled = True
        self.kubectl("delete", "crd", *self._rollouts_crd_names, "--wait=true", "--timeout=120s")

    def install_argo_rollouts(self) -> float:
        """Argo Rollouts back: its CRDs applied and Established, then its controller; the seconds
        that took."""
        if not self.argo_rollouts:
            raise ControlPlaneError("this control plane runs without Argo Rollouts")
        started = time.monotonic()
        self._begin_rollouts_crds()
        self._finish_rollouts_crds()
        self._rollouts_uninstalled = False
        self.start_component(ROLLOUTS_CONTROLLER)
        return time.monotonic() - started

    @property
    def stopped(self) -> list[str]:
        """The components a fault stopped and nothing started again yet."""
        return [c.name for c in self.components if c.name in self._stopped]

    def restore(self) -> None:
        """Undo every fault: stopped components start again (etcd before the apiserver, in start-up
        order), and Argo Rollouts is installed again if it was uninstalled."""
        for name in self.stopped:
            if not (name == ROLLOUTS_CONTROLLER and self._rollouts_uninstalled):
                self.start_component(name)
        if self._rollouts_uninstalled:
            self.install_argo_rollouts()

    def _wait_healthy(self, name: str) -> None:
        if name in self._health:
            url, context = self._health[name]
            self._wait_http(url, name, context)

    # -- conveniences --------------------------------------------------------------------------

    def kubectl(
        self, *args: str, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(self.binaries["kubectl"]), f"--kubeconfig={self.kubeconfig}", *args],
            capture_output=True,
            text=True,
            check=False,
            input=input_text,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise ControlPlaneError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def kubectl_apply(
        self, manifests: Sequence[dict[str, object]], *extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Server-side apply (large CRDs exceed the client-side last-applied annotation)."""
        text = yaml.safe_dump_all(manifests)
        return self.kubectl(
            "apply", "--server-side", "--field-manager=mlops-dev", "-f", "-", *extra, input_text=text
        )

    def audit_entries(self, offset: int = 0) -> Iterator[dict[str, Any]]:
        """The audit log's entries from byte `offset` on; only whole lines: the apiserver may be
        writing the last one right now."""
        with self.audit_log.open("rb") as log:
            log.seek(offset)
            text = log.read().decode(errors="replace")
        for line in text[: text.rfind("\n") + 1].splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                continue

    def writes_by(self, username: str, since: datetime | None = None) -> list[dict[str, Any]]:
        """Write requests (create/update/patch/delete) `username` made, from the audit log."""
        entries = []
        for entry in self.audit_entries():
            if entry.get("stage") != "ResponseComplete" or entry["user"]["username"] != username:
                continue
            if entry.get("verb") in READ_VERBS:  # logged only for audit_read_users
                continue
            if since is None or from_rfc3339(entry["requestReceivedTimestamp"]) >= since:
                entries.append(entry)
        return entries

    def service_account_kubeconfig(
        self, namespace: str, name: str, *, duration: str = "24h", path: Path | None = None
    ) -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/name` with a token from the
        TokenRequest API: exactly the permissions its (Cluster)RoleBindings grant, as a pod would have."""
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        target = path or self.workdir / f"sa-{namespace}-{name}.kubeconfig"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "mlops-dev",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_cert)},
                }
            ],
            "users": [{"name": name, "user": {"token": token}}],
            "contexts": [{"name": "mlops-dev", "context": {"cluster": "mlops-dev", "user": name}}],
            "current-context": "mlops-dev",
        }
        target.write_text(yaml.safe_dump(config))
        target.chmod(0o600)
        return target

    def denied_requests(self, username: str, offset: int = 0) -> list[dict[str, Any]]:
        """Requests of `username` the apiserver refused with 403 (from the audit log, from byte
        `offset` on): reads show up only for audit_read_users, writes always."""
        denied = []
        for entry in self.audit_entries(offset):
            if entry.get("stage") != "ResponseComplete" or entry["user"]["username"] != username:
                continue
            if (entry.get("responseStatus") or {}).get("code") == 403:
                denied.append(entry)
        return denied

    def install_crds(self, crd_dir: Path) -> None:
        files = sorted(crd_dir.glob("*.yaml"))
        self.kubectl("apply", "--server-side", "--field-manager=mlops-dev", *[f"-f={f}" for f in files])
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", *[f"-f={f}" for f in files])
