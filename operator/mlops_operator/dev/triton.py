"""A real tritonserver on loopback: the Triton of tests, benchmarks and `mlopsctl dev`.

It is the binary bundled in the `nvidia-pytriton` wheel (tritonserver 2.51, CPU, python backend
only), installed in its own venv by `make triton` (.venv-triton: nvidia-pytriton 0.7.0, numpy < 2,
onnxruntime). `hack/triton-setup.sh` puts the wheel's python backend stub where tritonserver looks for
it. Two things the stub needs from the environment: libpython of the venv's interpreter
(LD_LIBRARY_PATH = its LIBDIR) and the venv's `bin` first on PATH, so the stub's embedded Python
finds the venv's numpy and onnxruntime.

`tritonserver_command` gives the argv and env of one server (the local pod runner runs a serving
pod's container with it); `LocalTriton` starts one on free ports and waits until it is ready.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..builders.triton import tritonserver_args
from .controlplane import free_port
from .processes import Started, stop_group

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_TRITON_VENV = REPO_ROOT / ".venv-triton"


class TritonUnavailableError(RuntimeError):
    """The local tritonserver is not installed, or did not become ready."""


@functools.cache
def _venv_layout(venv: Path) -> tuple[Path, Path]:
    """(pytriton's tritonserver folder, the interpreter's LIBDIR) of a triton venv."""
    python = venv / "bin" / "python"
    if not os.access(python, os.X_OK):
        raise TritonUnavailableError(f"{python} is missing: run `make triton`")
    probe = (
        "import pathlib, sysconfig, pytriton;"
        "print(pathlib.Path(pytriton.__file__).parent / 'tritonserver');"
        "print(sysconfig.get_config_var('LIBDIR'))"
    )
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False, timeout=60)
    if done.returncode != 0:
        raise TritonUnavailableError(f"{venv} has no pytriton (run `make triton`): {done.stderr[-2000:]}")
    server_dir, libdir = done.stdout.split("\n")[:2]
    stub = Path(server_dir) / "backends" / "python" / "triton_python_backend_stub"
    if not stub.exists():
        raise TritonUnavailableError(f"{stub} is missing: run hack/triton-setup.sh {venv}")
    return Path(server_dir), Path(libdir)


def tritonserver_command(
    repository: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int,
    *,
    host: str = "127.0.0.1",
    venv: Path = DEFAULT_TRITON_VENV,
    base_env: Mapping[str, str] | None = None,
) -> tuple[list[str], dict[str, str]]:
    """argv and env that run the local tritonserver on `repository` with the serving container's
    arguments (`builders.triton.tritonserver_args`), listening on `host` (loopback by default).

    `base_env` (default: this process's environment) is extended, not replaced: the local pod runner
    passes the container's env there.
    """
    server_dir, libdir = _venv_layout(venv)
    env = dict(os.environ if base_env is None else base_env)
    library_path = env.get("LD_LIBRARY_PATH")
    env["LD_LIBRARY_PATH"] = f"{libdir}:{library_path}" if library_path else str(libdir)
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', os.defpath)}"
    argv = [
        str(server_dir / "bin" / "tritonserver"),
        *tritonserver_args(
            str(repository), http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port
        ),
        f"--backend-directory={server_dir / 'backends'}",
        f"--http-address={host}",
        f"--grpc-address={host}",
        f"--metrics-address={host}",
        # No GPU here: skip the DCGM probe (and its log noise) for GPU metrics.
        "--allow-gpu-metrics=false",
        # On SIGTERM tritonserver waits for open client connections (30 s by default), which a test's
        # idle keep-alive clients hold: a local server stops within seconds.
        "--exit-timeout-secs=3",
        # Several local servers share this machine's /dev/shm: the python backend's shared-memory
        # regions must not collide (each pod has its own /dev/shm in a cluster).
        f"--backend-config=python,shm-region-prefix-name=mlops-triton-{http_port}-",
    ]
    return argv, env


@dataclass
class LocalTriton(Started):
    repository: Path
    workdir: Path
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    host: str = "127.0.0.1"
    venv: Path = DEFAULT_TRITON_VENV
    extra_args: Sequence[str] = ()
    startup_timeout: float = 60.0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def http_address(self) -> str:
        """host:port, as tritonclient.http wants it."""
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def log(self) -> Path:
        return self.workdir / "tritonserver.log"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def start(self) -> None:
        if self._process is not None:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        for name in ("http_port", "grpc_port", "metrics_port"):
            if not getattr(self, name):
                setattr(self, name, free_port())
        argv, env = tritonserver_command(
            self.repository, self.http_port, self.grpc_port, self.metrics_port, host=self.host, venv=self.venv
        )
        with self.log.open("ab") as out:
            # Its own process group: the python backend's stub processes are children, stop() ends all.
            self._process = subprocess.Popen(
                [*argv, *self.extra_args],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        self._wait_ready()

    def ready(self) -> bool:
        try:
            # The URL is http://127.0.0.1:<port>, built here (S310 is about file: URLs).
            with urllib.request.urlopen(f"{self.http_url}/v2/health/ready", timeout=2) as response:  # noqa: S310
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def metrics(self) -> str:
        """Triton's Prometheus exposition text."""
        with urllib.request.urlopen(self.metrics_url, timeout=5) as response:  # noqa: S310
            return str(response.read().decode())

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise TritonUnavailableError(
                    f"tritonserver exited with {code}:\n{_errors(self.log.read_text(errors='replace'))}"
                )
            if self.ready():
                return
            time.sleep(0.1)
        self.stop()
        raise TritonUnavailableError(
            f"tritonserver not ready within {self.startup_timeout:.0f}s; see {self.log}"
        )

    def stop(self, timeout: float = 15) -> None:
        process, self._process = self._process, None
        if process is not None:
            # The final SIGKILL of the group: stubs left by a server that died hard hold shared memory.
            stop_group(process, timeout)


def _errors(log: str, limit: int = 4000) -> str:
    """The log's error lines (glog `E...` lines, `error:`, models UNAVAILABLE), else its tail: the
    options table the server prints would otherwise fill a message meant to say why it stopped."""
    wanted = [
        line
        for line in log.splitlines()
        if re.match(r"^E\d{4} ", line) or line.startswith("error:") or "UNAVAILABLE" in line
    ]
    return ("\n".join(wanted) if wanted else log)[-limit:]
