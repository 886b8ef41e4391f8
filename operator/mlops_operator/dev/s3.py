"""moto's S3 server on loopback: the S3 of tests and `mlopsctl dev`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from .processes import Started

# moto accepts any credentials; these fixed ones go into the dev Secret so the real code path
# (credentials from a Secret) is exercised.
DEV_ACCESS_KEY_ID = "mlops-dev"
DEV_SECRET_ACCESS_KEY = "mlops-dev-secret"  # noqa: S105 - a throwaway credential for a local fake
DEV_REGION = "us-east-1"
# MLOPS_S3_ENDPOINT_ALLOWLIST of the operator in tests and `mlopsctl dev`: the local S3 on loopback.
# Production allow-lists name their S3 endpoints; loopback would let a tenant reach the operator's pod.
LOOPBACK_ENDPOINTS = ("127.0.0.1", "localhost", "[::1]")


@dataclass
class LocalS3(Started):
    port: int = 0
    host: str = "127.0.0.1"
    _server: Any = field(default=None, repr=False)

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> None:
        from moto.server import ThreadedMotoServer  # noqa: PLC0415 - heavy, only when used

        if not self.port:
            from .controlplane import free_port  # noqa: PLC0415

            self.port = free_port()
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access log line per request
        self._server = ThreadedMotoServer(ip_address=self.host, port=self.port, verbose=False)
        self._server.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def stop(self) -> None:
        """Stop serving: new connections are refused, pooled ones fail. The data stays (moto keeps it
        in this process): `start()` serves the same buckets on the same port again."""
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        import boto3  # noqa: PLC0415

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=DEV_REGION,
            aws_access_key_id=DEV_ACCESS_KEY_ID,
            aws_secret_access_key=DEV_SECRET_ACCESS_KEY,
        )
