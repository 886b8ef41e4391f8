"""Runs the containers of simulated pods as local processes: the container runtime of `mlopsctl dev`.

kwok makes a pod Running but runs nothing. For pods this runner selects, it starts the container's
command here, with the container's environment (values, Secret keys and pod fields resolved the way
the kubelet would), and when the process exits it reports the exit code and the termination message
through pod status, as a kubelet does. So the real trainer runs as the real workload, and the operator
reads its real result. Images are ignored: `executables` maps a command (e.g. `mlops-trainer`) to a
local program. Only single-pod workloads are supported (no pod DNS for torchrun rendezvous here).

Serving pods (a `tritonserver` container, with `serving` set): their init containers run first (the
trainer's fetch-model-repository, into a local folder standing in for the pod's emptyDir), then the
real tritonserver of .venv-triton on free local ports; each pod's metrics port is published to the
Prometheus file discovery (`serving.sd_file`) with the pod's labels, and its HTTP URL is in
`endpoints`. kwok, not Triton's readiness, still decides the pod's Ready condition.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlops_contract import envvars

from .pods import EXIT_CODE_ANNOTATION, finish_pod

log = logging.getLogger(__name__)

_ANNOTATION_REF = re.compile(r"^metadata\.annotations\['(.+)'\]$")
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


@dataclass
class _Running:
    process: subprocess.Popen[bytes]
    workdir: Path
    termination_log: Path
    metrics_address: str | None = None  # a serving pod's target in the Prometheus file discovery


@dataclass(frozen=True)
class ServingRuntime:
    """How serving pods run here: the Prometheus file-discovery file their metrics ports go to."""

    sd_file: Path | None = None
    triton_command: str = "tritonserver"


@dataclass
class LocalPodRunner:
    """Polls `namespace` for Running pods matching `label_selector` and runs their first container."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str
    executables: Mapping[str, str]
    # Every workload pod the operator makes (training, compile, evaluate); pods whose command is not in
    # `executables` are left alone (kwok keeps them Running).
    label_selector: str = "app.kubernetes.io/managed-by=mlops-operator"
    extra_env: Mapping[str, str] = field(default_factory=dict)
    serving: ServingRuntime | None = None
    poll_seconds: float = 0.5
    endpoints: dict[str, str] = field(default_factory=dict)  # serving pod name -> Triton's HTTP URL
    _running: dict[str, _Running] = field(default_factory=dict)
    _done: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def core(self) -> Any:
        from kubernetes import client  # noqa: PLC0415

        return client.CoreV1Api(self.api)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="local-pod-runner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=10)
        # SIGTERM every process first, then wait for each: servers shut down side by side, not one
        # grace period after another.
        for running in self._running.values():
            self._terminate(running)
        for running in self._running.values():
            self._discard(running)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception:  # a broken poll must not end the runner; the next one retries
                log.exception("local pod runner: sync failed")
            self._stop.wait(self.poll_seconds)

    def _sync(self) -> None:
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=self.label_selector).items
        seen = set()
        ending: list[_Running] = []
        for pod in pods:
            uid = pod.metadata.uid
            seen.add(uid)
            annotations = pod.metadata.annotations or {}
            if pod.metadata.deletion_timestamp is not None:
                if uid in self._running:  # the kubelet sends SIGTERM on deletion: so do we
                    ending.append(self._running.pop(uid))
                    self._terminate(ending[-1])  # now; reaped below, all grace periods at once
                continue
            if uid in self._running:
                self._reap(pod, uid)
            elif (
                uid not in self._done
                and pod.status.phase == "Running"
                and EXIT_CODE_ANNOTATION not in annotations
                and self._runs(pod)
            ):
                if self._serves(pod):
                    self._launch_serving(pod)
                else:
                    self._launch(pod)
        for uid in set(self._running) - seen:
            ending.append(self._running.pop(uid))
            self._terminate(ending[-1])
        for running in ending:
            self._discard(running)

    def _runs(self, pod: Any) -> bool:
        return (pod.spec.containers[0].command or [""])[0] in self.executables or self._serves(pod)

    def _serves(self, pod: Any) -> bool:
        command = (pod.spec.containers[0].command or [""])[0]
        return self.serving is not None and command == self.serving.triton_command

    def _volume_dirs(self, pod: Any, workdir: Path) -> dict[str, Path]:
        """Each emptyDir of the pod as a local folder (shared by its containers, as in a pod)."""
        dirs = {}
        for volume in pod.spec.volumes or []:
            if volume.empty_dir is not None:
                dirs[volume.name] = workdir / f"volume-{volume.name}"
                dirs[volume.name].mkdir(parents=True, exist_ok=True)
        return dirs

    def _container_env(
        self, pod: Any, container: Any, workdir: Path, dirs: Mapping[str, Path]
    ) -> dict[str, str]:
        """The container's env with paths under its volume mounts mapped to the local folders."""
        env = self._environment(pod, container, workdir, workdir / f"termination-{container.name}")
        mounts = {m.mount_path: dirs[m.name] for m in container.volume_mounts or [] if m.name in dirs}
        for name, value in env.items():
            for mount, local in mounts.items():
                if value == mount or value.startswith(mount.rstrip("/") + "/"):
                    env[name] = str(local) + value.removeprefix(mount)
        return env

    def _launch_serving(self, pod: Any) -> None:
        from . import prometheus_sd  # noqa: PLC0415
        from .controlplane import free_port  # noqa: PLC0415
        from .triton import tritonserver_command  # noqa: PLC0415

        assert self.serving is not None
        workdir = Path(tempfile.mkdtemp(prefix=f"pod-{pod.metadata.name}-"))
        dirs = self._volume_dirs(pod, workdir)
        for init in pod.spec.init_containers or []:
            env = self._container_env(pod, init, workdir, dirs)
            argv = [_expand(a, env) for a in [*(init.command or []), *(init.args or [])]]
            argv[0] = self.executables.get(argv[0], argv[0])
            done = subprocess.run(argv, env=env, cwd=workdir, capture_output=True, timeout=600, check=False)
            if done.returncode != 0:
                log.warning("local pod runner: init container %s of %s failed", init.name, pod.metadata.name)
                message = (done.stderr or done.stdout).decode(errors="replace")[-2048:]
                finish_pod(
                    self.core, self.namespace, pod.metadata.name, exit_code=done.returncode, message=message
                )
                self._done.add(pod.metadata.uid)
                shutil.rmtree(workdir, ignore_errors=True)
                return
        container = pod.spec.containers[0]
        env = self._container_env(pod, container, workdir, dirs)
        repository = next(
            (
                dirs[m.name]
                for m in container.volume_mounts or []
                if m.mount_path == "/models" and m.name in dirs
            ),
            workdir / "models",
        )
        http, grpc, metrics = free_port(), free_port(), free_port()
        argv, env = tritonserver_command(repository, http, grpc, metrics, base_env=env)
        log.info("local pod runner: starting tritonserver for pod %s on port %d", pod.metadata.name, http)
        with (workdir / "log").open("wb") as out:
            process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
            )
        address = f"127.0.0.1:{metrics}"
        labels = pod.metadata.labels or {}
        if self.serving.sd_file is not None:
            prometheus_sd.publish(
                self.serving.sd_file,
                address,
                {
                    "namespace": pod.metadata.namespace,
                    "pod": pod.metadata.name,
                    "inferencedeployment": labels.get("mlops.dev/inferencedeployment", ""),
                    "rollouts_pod_template_hash": labels.get("rollouts-pod-template-hash", ""),
                },
            )
        self.endpoints[pod.metadata.name] = f"http://127.0.0.1:{http}"
        self._running[pod.metadata.uid] = _Running(process, workdir, workdir / "termination-log", address)

    def _launch(self, pod: Any) -> None:
        container = pod.spec.containers[0]
        workdir = Path(tempfile.mkdtemp(prefix=f"pod-{pod.metadata.name}-"))
        termination_log = workdir / "termination-log"
        env = self._environment(pod, container, workdir, termination_log)
        argv = [_expand(a, env) for a in [*(container.command or []), *(container.args or [])]]
        if not argv:
            raise ValueError(f"pod {pod.metadata.name} has no command: the runner cannot run images")
        argv[0] = self.executables.get(argv[0], argv[0])
        log.info("local pod runner: starting %s for pod %s", argv[0], pod.metadata.name)
        with (workdir / "log").open("wb") as out:
            process = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True
            )
        self._running[pod.metadata.uid] = _Running(process, workdir, termination_log)

    def _reap(self, pod: Any, uid: str) -> None:
        running = self._running[uid]
        code = running.process.poll()
        if code is None:
            return
        del self._running[uid]
        self._done.add(uid)
        self._unpublish(running)
        self.endpoints.pop(pod.metadata.name, None)
        message = running.termination_log.read_text() if running.termination_log.exists() else ""
        if not message:  # terminationMessagePolicy FallbackToLogsOnError: the log's tail stands in
            message = (running.workdir / "log").read_text(errors="replace")[-2048:]
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N, as a container reports
        finish_pod(self.core, self.namespace, pod.metadata.name, exit_code=exit_code, message=message[-4096:])
        shutil.rmtree(running.workdir, ignore_errors=True)

    def _terminate(self, running: _Running) -> None:
        if running.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.process.pid, signal.SIGTERM)

    def _discard(self, running: _Running) -> None:
        """Stop the process (SIGTERM, then SIGKILL after a grace period) and remove its files."""
        self._unpublish(running)
        if running.process.poll() is None:
            self._terminate(running)
            try:
                running.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait()
        shutil.rmtree(running.workdir, ignore_errors=True)

    def _unpublish(self, running: _Running) -> None:
        if running.metrics_address and self.serving is not None and self.serving.sd_file is not None:
            from . import prometheus_sd  # noqa: PLC0415

            prometheus_sd.unpublish(self.serving.sd_file, running.metrics_address)

    def _environment(self, pod: Any, container: Any, workdir: Path, termination_log: Path) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MLOPS_", "AWS_", "WANDB_", "KUBECONFIG"))
        }
        for var in container.env or []:
            value = self._resolve(pod, var)
            if value is not None:
                value = _expand(value, env)
                # The container's /tmp is a scratch volume: here, this pod's work directory.
                if value == "/tmp" or value.startswith("/tmp/"):  # noqa: S108
                    value = str(workdir) + value.removeprefix("/tmp")  # noqa: S108
                env[var.name] = value
        env.update(self.extra_env)
        # The container's /tmp and termination-message path, mapped into this pod's work directory.
        env["TMPDIR"] = str(workdir)
        env[envvars.WORK_DIR] = str(workdir / "trainer")
        env[envvars.TERMINATION_MESSAGE_PATH] = str(termination_log)
        return env

    def _resolve(self, pod: Any, var: Any) -> str | None:
        if var.value is not None:
            return str(var.value)
        source = var.value_from
        if source is None:
            return ""
        if source.secret_key_ref is not None:
            ref = source.secret_key_ref
            secret = self.core.read_namespaced_secret(ref.name, self.namespace)
            return base64.b64decode((secret.data or {})[ref.key]).decode()
        if source.field_ref is not None:
            path = source.field_ref.field_path
            if match := _ANNOTATION_REF.match(path):
                return str((pod.metadata.annotations or {}).get(match.group(1), ""))
            fields = {"metadata.name": pod.metadata.name, "metadata.namespace": pod.metadata.namespace}
            return str(fields.get(path, ""))
        return None


def _expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in commands, args and env values."""
    return _VAR_REF.sub(lambda m: env.get(m.group(1), m.group(0)), text)
