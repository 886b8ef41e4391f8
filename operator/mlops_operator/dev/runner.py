"""Runs the containers of simulated pods as local processes: the container runtime of `mlopsctl dev`.

kwok makes a pod Running but runs nothing. For pods this runner selects, it starts the container's
command here, with the container's environment (values, Secret keys and pod fields resolved the way
the kubelet would), and when the process exits it reports the exit code and the termination message
through pod status, as a kubelet does. So the real trainer runs as the real workload, and the operator
reads its real result. Images are ignored: `executables` maps a command (e.g. `mlops-trainer`) to a
local program. Only single-pod workloads are supported (no pod DNS for torchrun rendezvous here).
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
    poll_seconds: float = 0.5
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
        for pod in pods:
            uid = pod.metadata.uid
            seen.add(uid)
            annotations = pod.metadata.annotations or {}
            if pod.metadata.deletion_timestamp is not None:
                if uid in self._running:  # the kubelet sends SIGTERM on deletion: so do we
                    self._discard(self._running.pop(uid))
                continue
            if uid in self._running:
                self._reap(pod, uid)
            elif (
                uid not in self._done
                and pod.status.phase == "Running"
                and EXIT_CODE_ANNOTATION not in annotations
                and (pod.spec.containers[0].command or [""])[0] in self.executables
            ):
                self._launch(pod)
        for uid in set(self._running) - seen:
            self._discard(self._running.pop(uid))

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
        message = running.termination_log.read_text() if running.termination_log.exists() else ""
        if not message:  # terminationMessagePolicy FallbackToLogsOnError: the log's tail stands in
            message = (running.workdir / "log").read_text(errors="replace")[-2048:]
        exit_code = code if code >= 0 else 128 - code  # killed by signal N: 128+N, as a container reports
        finish_pod(self.core, self.namespace, pod.metadata.name, exit_code=exit_code, message=message[-4096:])
        shutil.rmtree(running.workdir, ignore_errors=True)

    def _discard(self, running: _Running) -> None:
        """Stop the process (SIGTERM, then SIGKILL after a grace period) and remove its files."""
        if running.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(running.process.pid, signal.SIGTERM)
            try:
                running.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait()
        shutil.rmtree(running.workdir, ignore_errors=True)

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
