"""A real MLflow tracking server on loopback: the model registry of tests and `mlopsctl dev`.

It runs from its own venv (`make mlflow`: .venv-mlflow, mlflow==3.17.2 + boto3), whose server
dependencies stay out of the operator's. Registry data lives in a sqlite file in `workdir`;
artifacts the server is asked to store go to the local moto S3. `stop()` then `start()` brings it
back on the same port with the same data: tests use that to take the registry away and back.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .controlplane import free_port
from .processes import Started, stop_group
from .s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY

REPO_ROOT = Path(__file__).resolve().parents[3]
DEFAULT_MLFLOW_BIN = REPO_ROOT / ".venv-mlflow" / "bin" / "mlflow"
# The admin of a server started with `basic_auth=True` (MLflow's basic-auth app, no default password).
DEV_ADMIN_USER = "admin"
DEV_ADMIN_PASSWORD = "mlops-dev-admin"  # noqa: S105 - a throwaway credential for a local server


@dataclass
class LocalMlflow(Started):
    workdir: Path
    s3_endpoint_url: str
    artifacts_bucket: str = "mlflow-artifacts"
    port: int = 0
    host: str = "127.0.0.1"
    mlflow_bin: Path = DEFAULT_MLFLOW_BIN
    # MLflow's basic-auth app: every request needs the admin's (or a user's) name and password.
    basic_auth: bool = False
    startup_timeout: float = 60.0
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def tracking_uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log(self) -> Path:
        return self.workdir / "mlflow.log"

    def start(self) -> None:
        if self._process is not None:
            return
        if not self.mlflow_bin.exists():
            raise RuntimeError(f"{self.mlflow_bin} is missing: run `make mlflow`")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        argv = [
            str(self.mlflow_bin),
            "server",
            "--host", self.host,
            "--port", str(self.port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.workdir / 'mlflow.db'}",
            "--artifacts-destination", f"s3://{self.artifacts_bucket}/mlflow",
            "--serve-artifacts",
            *(["--app-name", "basic-auth"] if self.basic_auth else []),
        ]  # fmt: skip
        # The security middleware (3.x) accepts Host headers of localhost and private addresses by
        # default, 127.0.0.1:<port> included: no --allowed-hosts needed on loopback.
        env = {
            **os.environ,
            # The server's background job runner (3.17) is not needed for the registry.
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint_url,
            "AWS_ACCESS_KEY_ID": DEV_ACCESS_KEY_ID,
            "AWS_SECRET_ACCESS_KEY": DEV_SECRET_ACCESS_KEY,
            "AWS_DEFAULT_REGION": DEV_REGION,
            # Read by the basic-auth app only (its users live in basic_auth.db in workdir).
            "MLFLOW_AUTH_ADMIN_PASSWORD": DEV_ADMIN_PASSWORD,
            "MLFLOW_FLASK_SERVER_SECRET_KEY": "mlops-dev-flask-secret",
        }
        with self.log.open("ab") as out:
            # Its own process group: the CLI starts uvicorn as a child, and stop() ends both.
            self._process = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=self.workdir, start_new_session=True
            )
        self._wait_healthy()

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-3000:]
                self._process = None
                raise RuntimeError(f"mlflow server exited:\n{tail}")
            try:
                # The URL is http://127.0.0.1:<port>, built here (S310 is about file: URLs).
                with urllib.request.urlopen(f"{self.tracking_uri}/health", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.25)
        self.stop()
        raise RuntimeError(f"mlflow server not healthy within {self.startup_timeout:.0f}s; see {self.log}")

    def stop(self, timeout: float = 10) -> None:
        process, self._process = self._process, None
        if process is not None:
            # uvicorn, the CLI's child, may outlive it a moment; the port must be free for a restart.
            stop_group(process, timeout, linger=timeout)
