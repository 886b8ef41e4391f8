"""Serving the digits model through a real tritonserver vs calling ONNX Runtime directly, on CPU.

    .venv/bin/python bench/triton_serving.py [--requests 2000] [--engine-dir DIR] [--json out.json]

One run, same inputs (single-image requests, batch 1, as online inference sends them), in this order:

- `onnxruntime`: `InferenceSession.run` in this process (16 threads for concurrency 16), the floor;
- `triton-http` / `triton-grpc`: tritonclient (HTTP with binary tensors, gRPC), one client per thread,
  against the tritonserver of .venv-triton serving the repository `builders.triton` builds (the
  python-backend variant: this tritonserver has no ONNX Runtime backend; max_batch_size 16, dynamic
  batching on). The python backend runs the same onnxruntime in its stub process;
- `triton-http-raw`: the same HTTP request as bytes built once, sent with `http.client` (no client
  library work): Triton's own cost plus one HTTP round trip;
- `echo-http-raw`: the same bytes to a bare HTTP echo server (asyncio, its own process) with the same
  client: the protocol round trip alone on this machine.

Triton's added latency per request = p50(triton) - p50(onnxruntime) at concurrency 1; set against
the echo's p50 it splits into protocol round trip and Triton's own work (queueing, the python
backend's IPC to its stub). Triton's /metrics give the server-side split (queue, compute in/infer/out).
The model is trained and compiled by the real trainer (.venv-trainer, CPU, 2 epochs) into a temporary
folder unless --engine-dir names a compile output (model.onnx + metadata.json). Loopback only; every
loop is bounded by --requests. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "operator"))

from mlops_operator.api.v1alpha1.inferencedeployment import Triton  # noqa: E402
from mlops_operator.builders.triton import build_model_repository, triton_model_version  # noqa: E402
from mlops_operator.dev.controlplane import free_port  # noqa: E402
from mlops_operator.dev.triton import LocalTriton  # noqa: E402

MODEL = "digits"
# Triton's version of the model, as the operator serves MLflow's version 3 of it (the metrics' label).
VERSION = triton_model_version("3")
TRAINER = ROOT / ".venv-trainer" / "bin" / "mlops-trainer"
Call = Callable[[int], Any]  # sends input number i


# --- the model --------------------------------------------------------------------------------------


def compiled_engine(work: Path) -> Path:
    """Train and compile the digits model with the real trainer into `work`; the compile output."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "AWS_", "WANDB_"))}
    env |= {"WANDB_MODE": "disabled", "MLOPS_TERMINATION_MESSAGE_PATH": str(work / "result.json")}
    steps = [
        ["write-demo-data", "--dataset-uri", str(work / "data")],
        ["train", "--model", "digits-cnn", "--dataset-uri", str(work / "data"),
         "--output-uri", str(work / "model"), "--device", "cpu", "--work-dir", str(work / "scratch"),
         "--hyperparameters", json.dumps({"epochs": 2, "batchSize": 64, "numWorkers": 0})],
        ["compile", "--target", "onnx", "--precision", "fp32", "--max-batch-size", "16",
         "--model-uri", str(work / "model"), "--output-uri", str(work / "engine")],
    ]  # fmt: skip
    for args in steps:
        subprocess.run([str(TRAINER), *args], env=env, check=True, capture_output=True, timeout=600)
    return work / "engine"


def materialize(engine_dir: Path, target: Path, queue_delay_us: int) -> None:
    """The builder's repository on local disk (what fetch-model-repository leaves on the emptyDir)."""
    metadata = json.loads((engine_dir / "metadata.json").read_text())
    spec = Triton.model_validate(
        {"maxBatchSize": 16, "dynamicBatching": {"maxQueueDelayMicroseconds": queue_delay_us}}
    )
    repository = build_model_repository(
        MODEL, metadata, (engine_dir / "model.onnx").as_uri(), spec, 0, cpu_backend="python", version=VERSION
    )
    for path, data in repository.files.items():
        (target / path).parent.mkdir(parents=True, exist_ok=True)
        (target / path).write_bytes(data)
    shutil.copyfile(engine_dir / "model.onnx", target / repository.artifact.path)


# --- the echo server ----------------------------------------------------------------------------


class _Echo(asyncio.Protocol):
    """HTTP/1.1 keep-alive: answers every request with its own body (Content-Length framing only)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = re.search(rb"(?i)content-length:\s*(\d+)", self.buffer[:end])
            length = int(match.group(1)) if match else 0
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                + b"Content-Length: %d\r\n\r\n" % len(body)
                + body
            )


def serve_echo(port: int) -> None:
    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(loop.create_server(_Echo, "127.0.0.1", port))
    print("ready", flush=True)
    loop.run_until_complete(server.serve_forever())


# --- clients ------------------------------------------------------------------------------------


def v2_binary_request(batch: npt.NDArray[np.float32]) -> tuple[bytes, dict[str, str]]:
    """A KServe v2 inference request with the binary tensor extension, as tritonclient sends it."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "images",
                    "shape": list(batch.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": batch.nbytes},
                }
            ],
            "outputs": [{"name": "logits", "parameters": {"binary_data": True}}],
        }
    ).encode()
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + batch.tobytes(), headers


def raw_caller(port: int, path: str, requests: list[tuple[bytes, dict[str, str]]]) -> Callable[[], Call]:
    """Per thread: one keep-alive connection posting the request bodies built beforehand."""

    def make() -> Call:
        connection = http.client.HTTPConnection("127.0.0.1", port)

        def call(index: int) -> bytes:
            body, headers = requests[index]
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{path}: {response.status} {data[:200]!r}")
            return data

        return call

    return make


def http_caller(address: str, inputs: list[npt.NDArray[np.float32]]) -> Callable[[], Call]:
    def make() -> Call:
        client = httpclient.InferenceServerClient(address)

        def call(index: int) -> Any:
            batch = inputs[index]
            tensor = httpclient.InferInput("images", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch, binary_data=True)
            return client.infer(MODEL, [tensor]).as_numpy("logits")

        return call

    return make


def grpc_caller(address: str, inputs: list[npt.NDArray[np.float32]]) -> Callable[[], Call]:
    def make() -> Call:
        client = grpcclient.InferenceServerClient(address)

        def call(index: int) -> Any:
            batch = inputs[index]
            tensor = grpcclient.InferInput("images", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch)
            return client.infer(MODEL, [tensor]).as_numpy("logits")

        return call

    return make


def ort_caller(session: Any, inputs: list[npt.NDArray[np.float32]]) -> Callable[[], Call]:
    def make() -> Call:
        return lambda index: session.run(["logits"], {"images": inputs[index]})[0]

    return make


# --- measuring ----------------------------------------------------------------------------------


def measure(make: Callable[[], Call], count: int, concurrency: int) -> dict[str, float]:
    """Send inputs 0..count-1 once, spread over `concurrency` threads, each with a client of its own
    made in that thread (tritonclient's HTTP client is bound to its thread's gevent hub) and warmed
    up with 100 requests; the clock starts when every thread is ready."""
    latencies: list[float] = []
    lock = threading.Lock()
    clock: list[float] = []
    ready = threading.Barrier(concurrency, action=lambda: clock.append(time.perf_counter()))

    def work(first: int) -> None:
        caller, mine = make(), []
        for index in range(min(100, count)):
            caller(index)
        ready.wait()
        for index in range(first, count, concurrency):
            started = time.perf_counter()
            caller(index)
            mine.append(time.perf_counter() - started)
        with lock:
            latencies.extend(mine)

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(work, range(concurrency)))
    elapsed = time.perf_counter() - clock[0]
    latencies.sort()
    return {
        "requests": len(latencies),
        "p50_ms": 1000 * statistics.median(latencies),
        "p95_ms": 1000 * latencies[int(0.95 * (len(latencies) - 1))],
        "throughput_rps": len(latencies) / elapsed,
    }


def server_breakdown(metrics_before: str, metrics_after: str) -> dict[str, float]:
    """Triton's own per-request averages (µs) between two scrapes: queue, compute input/infer/output."""

    def counters(text: str) -> dict[str, float]:
        found = re.findall(
            rf'^(nv_inference_\w+)\{{model="{MODEL}",version="{VERSION}"\}} (\S+)$', text, re.M
        )
        return {name: float(value) for name, value in found}

    before, after = counters(metrics_before), counters(metrics_after)
    requests = after["nv_inference_request_success"] - before["nv_inference_request_success"]
    executions = after["nv_inference_exec_count"] - before["nv_inference_exec_count"]
    names = {
        "request": "nv_inference_request_duration_us",
        "queue": "nv_inference_queue_duration_us",
        "compute_input": "nv_inference_compute_input_duration_us",
        "compute_infer": "nv_inference_compute_infer_duration_us",
        "compute_output": "nv_inference_compute_output_duration_us",
    }
    result = {key: (after[name] - before[name]) / requests for key, name in names.items()}
    result["requests_per_execution"] = requests / executions
    return result


def machine() -> dict[str, Any]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")),
        platform.processor() or "unknown",
    )  # fmt: skip
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "tritonserver": "2.51 (nvidia-pytriton 0.7.0, python backend)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests per mode and concurrency")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--engine-dir", type=Path, help="a compile output (model.onnx + metadata.json)")
    parser.add_argument(
        "--queue-delay-us",
        type=int,
        default=100,
        help="dynamic batching's max queue delay (the spec's default)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--echo-server", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        serve_echo(args.echo_server)
        return

    with tempfile.TemporaryDirectory(prefix="triton-bench-") as temp:
        work = Path(temp)
        engine_dir = args.engine_dir or compiled_engine(work)
        materialize(engine_dir, work / "models", args.queue_delay_us)
        inputs = [
            np.ascontiguousarray(x[None])
            for x in np.random.default_rng(0).random((args.requests, 1, 8, 8), dtype=np.float32)
        ]
        raw_requests = [v2_binary_request(batch) for batch in inputs]
        session = ort.InferenceSession(str(engine_dir / "model.onnx"), providers=["CPUExecutionProvider"])

        echo_port = free_port()
        echo = subprocess.Popen(
            [sys.executable, __file__, "--echo-server", str(echo_port)], stdout=subprocess.PIPE, text=True
        )
        assert echo.stdout is not None
        assert echo.stdout.readline().strip() == "ready"
        results: list[dict[str, Any]] = []
        breakdowns: dict[str, dict[str, float]] = {}
        try:
            with LocalTriton(work / "models", work / "triton") as server:
                # The answers agree before anything is timed.
                expected = session.run(["logits"], {"images": inputs[0]})[0]
                np.testing.assert_allclose(http_caller(server.http_address, inputs)()(0), expected, atol=1e-5)
                modes: list[tuple[str, Callable[[], Call]]] = [
                    ("onnxruntime", ort_caller(session, inputs)),
                    ("triton-http", http_caller(server.http_address, inputs)),
                    ("triton-grpc", grpc_caller(server.grpc_address, inputs)),
                    (
                        "triton-http-raw",
                        raw_caller(server.http_port, f"/v2/models/{MODEL}/infer", raw_requests),
                    ),
                    ("echo-http-raw", raw_caller(echo_port, "/echo", raw_requests)),
                ]
                for concurrency in args.concurrency:
                    for name, make in modes:
                        before = server.metrics() if name.startswith("triton") else ""
                        figures = measure(make, len(inputs), concurrency)
                        if name.startswith("triton"):
                            breakdowns[f"{name} c={concurrency}"] = server_breakdown(before, server.metrics())
                        results.append({"mode": name, "concurrency": concurrency, **figures})
                        print(f"{name:16} c={concurrency:<3} {figures}", file=sys.stderr, flush=True)
        finally:
            echo.terminate()
            echo.wait()

    report(results, breakdowns, machine(), args.json)


def report(
    results: list[dict[str, Any]],
    breakdowns: dict[str, dict[str, float]],
    info: dict[str, Any],
    out: Path | None,
) -> None:
    print(f"machine: {info['cores']} cores, {info['cpu']}; Python {info['python']}, "
          f"onnxruntime {info['onnxruntime']}, tritonserver {info['tritonserver']}")  # fmt: skip
    columns = ("conc", 4), ("requests", 8), ("p50 ms", 8), ("p95 ms", 8), ("req/s", 8), ("added p50 µs", 13)
    print(f"{'mode':16} " + " ".join(f"{name:>{width}}" for name, width in columns))
    floor = {r["concurrency"]: r["p50_ms"] for r in results if r["mode"] == "onnxruntime"}
    for r in results:
        added = "" if r["mode"] == "onnxruntime" or r["mode"].startswith("echo") else (
            f"{1000 * (r['p50_ms'] - floor[r['concurrency']]):.0f}"
        )  # fmt: skip
        print(
            f"{r['mode']:16} {r['concurrency']:>4} {r['requests']:>8} {r['p50_ms']:>8.3f} "
            f"{r['p95_ms']:>8.3f} {r['throughput_rps']:>8.0f} {added:>13}"
        )
    print("Triton server-side, µs per request (from /metrics): request = queue + compute input/infer/output")
    for key, b in breakdowns.items():
        print(
            f"  {key:22} request {b['request']:7.0f}  queue {b['queue']:6.0f}  "
            f"input {b['compute_input']:5.0f}  infer {b['compute_infer']:6.0f}  "
            f"output {b['compute_output']:5.0f}  "
            f"requests/execution {b['requests_per_execution']:.2f}"
        )
    if out is not None:
        out.write_text(json.dumps({"machine": info, "results": results, "server": breakdowns}, indent=2))


if __name__ == "__main__":
    main()
