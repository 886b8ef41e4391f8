"""A real tritonserver serves the digits model from the repository the builder wrote.

The whole path the InferenceDeployment takes, with real components and no Kubernetes: the real
trainer trains and compiles the model (ONNX, CPU); `builders.triton` builds its repository (the
python-backend variant: this tritonserver has no ONNX Runtime backend); the operator's publisher
writes it to the local S3 under its content-addressed prefix; the real `mlops-trainer
fetch-model-repository` (the serving pod's init container) materializes it, checking sha256s; the
tritonserver of .venv-triton loads it. Its answers are compared with ONNX Runtime's, over HTTP and
gRPC, and its /metrics with the analysis queries (`builders.analysis_queries`).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from mlops_operator.api.v1alpha1.inferencedeployment import Triton
from mlops_operator.builders import analysis_queries as queries
from mlops_operator.builders.triton import (
    ModelRepository,
    build_model_repository,
    repository_uri,
    triton_model_version,
    tritonserver_args,
)
from mlops_operator.dev.s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY, LocalS3
from mlops_operator.dev.triton import (
    DEFAULT_TRITON_VENV,
    LocalTriton,
    TritonUnavailableError,
    tritonserver_command,
)
from mlops_operator.integrations.s3 import Boto3ObjectStore, S3Config, S3Credentials
from mlops_operator.integrations.triton_repository import publish_repository
from tests.integration.digits_engine import CompiledEngine, run_trainer

MODEL = "digits"
TOLERANCE = 1e-5
# Long enough for concurrent requests to meet in one batch on 2 busy cores, so the python model's
# join-and-split of a batch is what the concurrency test checks.
QUEUE_DELAY_US = 20_000
SPEC = Triton.model_validate(
    {
        "maxBatchSize": 8,
        "instanceCount": 1,
        "dynamicBatching": {"preferredBatchSizes": [4, 8], "maxQueueDelayMicroseconds": QUEUE_DELAY_US},
    }
)


@dataclass(frozen=True)
class Served:
    server: LocalTriton
    repository: ModelRepository
    uri: str
    session: Any  # onnxruntime.InferenceSession over the same model.onnx


def store(s3: LocalS3) -> Boto3ObjectStore:
    """The operator's S3 access with explicit (the tenant's) credentials, as its controller opens it."""
    return Boto3ObjectStore(
        S3Config(s3.endpoint_url, DEV_REGION, S3Credentials(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY))
    )


@pytest.fixture(scope="module")
def served(engine: CompiledEngine, s3: LocalS3, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    repository = build_model_repository(MODEL, engine.metadata, engine.uri, SPEC, 0, cpu_backend="python")
    uri = publish_repository(store(s3), f"s3://{engine.bucket}/serving", repository)
    work = tmp_path_factory.mktemp("serving")
    fetched = run_trainer(
        s3,
        ["fetch-model-repository", "--repository-uri", uri, "--repository-dir", str(work / "models")],
        work,
    )
    assert fetched["repository"]["digest"] == repository.digest
    with LocalTriton(work / "models", work / "triton") as server:
        session = ort.InferenceSession(engine.onnx, providers=["CPUExecutionProvider"])
        yield Served(server, repository, uri, session)


def images(count: int, seed: int) -> npt.NDArray[np.float32]:
    """Digit-like inputs: pixels in [0, 1] (the trainer scales the 0..16 digits by 1/16)."""
    return np.random.default_rng(seed).random((count, 1, 8, 8), dtype=np.float32)


def http_infer(client: httpclient.InferenceServerClient, batch: npt.NDArray[np.float32]) -> Any:
    tensor = httpclient.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    return client.infer(MODEL, [tensor]).as_numpy("logits")


def grpc_infer(client: grpcclient.InferenceServerClient, batch: npt.NDArray[np.float32]) -> Any:
    tensor = grpcclient.InferInput("images", list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch)
    return client.infer(MODEL, [tensor]).as_numpy("logits")


def test_the_published_repository_is_what_the_builder_built_and_publishing_again_writes_nothing(
    served: Served, engine: CompiledEngine, s3: LocalS3
) -> None:
    client = s3.client()
    prefix = served.uri.removeprefix(f"s3://{engine.bucket}/")
    assert served.uri == repository_uri(f"s3://{engine.bucket}/serving", served.repository)
    listed = {
        o["Key"]: o["LastModified"]
        for o in client.list_objects_v2(Bucket=engine.bucket, Prefix=prefix)["Contents"]
    }
    # The small files and the manifest; the engine stays where compile wrote it (by reference).
    assert sorted(k.removeprefix(prefix) for k in listed) == [
        "digits/1/model.py",
        "digits/config.pbtxt",
        "repository.json",
    ]
    assert client.get_object(Bucket=engine.bucket, Key=prefix + "repository.json")["Body"].read() == (
        served.repository.manifest_bytes()
    )
    # Content-addressed: the same repository again is the same prefix, left as it is ...
    assert publish_repository(store(s3), f"s3://{engine.bucket}/serving", served.repository) == served.uri
    again = {
        o["Key"]: o["LastModified"]
        for o in client.list_objects_v2(Bucket=engine.bucket, Prefix=prefix)["Contents"]
    }
    assert again == listed
    # ... and a changed spec is a new prefix beside it.
    wider = Triton.model_validate({**SPEC.wire(), "instanceCount": 2})
    changed = build_model_repository(MODEL, engine.metadata, engine.uri, wider, 0, cpu_backend="python")
    new_uri = publish_repository(store(s3), f"s3://{engine.bucket}/serving", changed)
    assert new_uri != served.uri
    assert new_uri.startswith(f"s3://{engine.bucket}/serving/triton/digits/")


def test_the_served_model_is_the_builders_config(served: Served) -> None:
    config = httpclient.InferenceServerClient(served.server.http_address).get_model_config(MODEL)
    assert (config["backend"], config["platform"], config["max_batch_size"]) == ("python", "", 8)
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("images", "TYPE_FP32", [1, 8, 8])
    ]
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["output"]] == [
        ("logits", "TYPE_FP32", [10])
    ]
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 8]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == QUEUE_DELAY_US
    assert [(g["kind"], g["count"]) for g in config["instance_group"]] == [("KIND_CPU", 1)]
    assert config["version_policy"] == {"latest": {"num_versions": 1}}


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_triton_answers_equal_onnx_runtime_over_http_and_grpc(served: Served, batch_size: int) -> None:
    batch = images(batch_size, seed=batch_size)
    (expected,) = served.session.run(["logits"], {"images": batch})
    over_http = http_infer(httpclient.InferenceServerClient(served.server.http_address), batch)
    over_grpc = grpc_infer(grpcclient.InferenceServerClient(served.server.grpc_address), batch)
    assert over_http.shape == over_grpc.shape == (batch_size, 10)
    np.testing.assert_allclose(over_http, expected, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(over_grpc, expected, rtol=0, atol=TOLERANCE)
    assert (over_http.argmax(axis=1) == expected.argmax(axis=1)).all()


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(served: Served) -> None:
    """16 clients at once: the dynamic batcher joins their requests, the model runs each batch once
    and splits the outputs back; every client must get the answer for its own input."""
    before = scrape(served.server)
    client = httpclient.InferenceServerClient(served.server.http_address, concurrency=16)
    batches = [images(1 + i % 3, seed=100 + i) for i in range(16)]
    pending = []
    for batch in batches:
        tensor = httpclient.InferInput("images", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        pending.append(client.async_infer(MODEL, [tensor]))
    for batch, request in zip(batches, pending, strict=True):
        (expected,) = served.session.run(["logits"], {"images": batch})
        np.testing.assert_allclose(request.get_result().as_numpy("logits"), expected, rtol=0, atol=TOLERANCE)
    client.close()
    after = scrape(served.server)
    requests = delta(before, after, queries.SUCCESS)
    executions = delta(before, after, "nv_inference_exec_count")
    assert requests == 16
    assert executions < requests, "no two requests met in one batch"


# --- metrics and the analysis queries ------------------------------------------------------------

Sample = tuple[str, dict[str, str], float]
_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Scrape:
    samples: list[Sample]
    at: float


def scrape(server: LocalTriton) -> Scrape:
    samples = []
    for line in server.metrics().splitlines():
        match = _LINE.match(line)
        if match and not line.startswith("#"):
            labels = dict(_LABEL.findall(match.group(2) or ""))
            samples.append((match.group(1), labels, float(match.group(3))))
    return Scrape(samples, time.monotonic())


def select(scraped: Scrape, name: str, matchers: dict[str, str]) -> dict[tuple[tuple[str, str], ...], float]:
    return {
        tuple(sorted(labels.items())): value
        for sample, labels, value in scraped.samples
        if sample == name and all(labels.get(k) == v for k, v in matchers.items())
    }


def delta(before: Scrape, after: Scrape, name: str, matchers: dict[str, str] | None = None) -> float:
    wanted = {"model": MODEL, **(matchers or {})}
    old = select(before, name, wanted)
    return sum(value - old.get(key, 0.0) for key, value in select(after, name, wanted).items())


class PromQL:
    """Evaluates the PromQL that `analysis_queries` writes, over two scrapes of one target: `rate(x[w])`
    as the increase between the scrapes per second, `sum`/`max` over the matching series, the four
    arithmetic operators on scalars, and `or` (lowest precedence: the left side unless it is an empty
    aggregation, i.e. no series matched). Enough to hold the queries' names, labels and arithmetic to the
    server's real counters; the canary tests run them in a real Prometheus."""

    _TOKEN = re.compile(
        r'\s*(?:(\d+(?:\.\d+)?)|([a-zA-Z_:][a-zA-Z0-9_:]*)|(\{(?:[^}"]|"(?:[^"\\]|\\.)*")*\})|(\[[0-9a-z]+\])|(.))'
    )

    def __init__(self, before: Scrape, after: Scrape) -> None:
        self.before, self.after = before, after

    def eval(self, query: str) -> float:
        self.tokens = [t for t in self._TOKEN.findall(query) if any(t)]
        self.pos = 0
        value = self._or()
        assert self.pos == len(self.tokens), f"unparsed rest of {query!r}"
        return value

    def _peek(self) -> str:
        return next((t for t in self.tokens[self.pos] if t), "") if self.pos < len(self.tokens) else ""

    def _take(self, expected: str | None = None) -> str:
        token = self._peek()
        assert expected is None or token == expected, f"expected {expected!r}, got {token!r}"
        self.pos += 1
        return token

    def _or(self) -> float:
        value = self._expr()
        while self._peek() == "or":
            self._take()
            other = self._expr()
            value = other if math.isnan(value) else value
        return value

    def _expr(self) -> float:
        value = self._term()
        while self._peek() in ("+", "-"):
            value = value + self._term() if self._take() == "+" else value - self._term()
        return value

    def _term(self) -> float:
        value = self._factor()
        while self._peek() in ("*", "/"):
            if self._take() == "*":
                value *= self._factor()
            else:
                divisor = self._factor()
                value = value / divisor if divisor else math.nan
        return value

    def _factor(self) -> float:
        token = self._take()
        if token == "(":
            value = self._or()
            self._take(")")
            return value
        if re.fullmatch(r"\d+(\.\d+)?", token):
            return float(token)
        assert token in ("sum", "max"), f"unsupported PromQL: {token!r}"
        self._take("(")
        series = self._vector()
        self._take(")")
        values = list(series.values())
        if not values:
            return math.nan
        return sum(values) if token == "sum" else max(values)

    def _vector(self) -> dict[tuple[tuple[str, str], ...], float]:
        if self._peek() == "rate":
            self._take()
            self._take("(")
            name, matchers = self._selector()
            self._take()  # the range [w]: the two scrapes are the window
            self._take(")")
            old, new = select(self.before, name, matchers), select(self.after, name, matchers)
            seconds = self.after.at - self.before.at
            return {key: (value - old.get(key, 0.0)) / seconds for key, value in new.items()}
        name, matchers = self._selector()
        return select(self.after, name, matchers)

    def _selector(self) -> tuple[str, dict[str, str]]:
        name = self._take()
        braces = self._take()
        assert braces.startswith("{"), f"expected label matchers after {name}"
        return name, dict(_LABEL.findall(braces))


def test_metrics_count_successes_and_model_failures_and_the_queries_compute_from_them(served: Served) -> None:
    http = httpclient.InferenceServerClient(served.server.http_address)
    grpc = grpcclient.InferenceServerClient(served.server.grpc_address)
    before = scrape(served.server)

    for i in range(6):
        http_infer(http, images(2, seed=200 + i))
        grpc_infer(grpc, images(1, seed=300 + i))
    # Malformed requests Triton refuses before the model (a wrong shape, a wrong input name): client
    # errors, in neither counter.
    with pytest.raises(InferenceServerException, match="unexpected shape"):
        http_infer(http, np.zeros((1, 8, 8), dtype=np.float32))
    wrong_name = httpclient.InferInput("pixels", [1, 1, 8, 8], "FP32")
    wrong_name.set_data_from_numpy(images(1, seed=1), binary_data=True)
    with pytest.raises(InferenceServerException, match="pixels"):
        http.infer(MODEL, [wrong_name])
    # NaN pixels: the model refuses that request alone (an error response; Triton counts it as a
    # success: the python backend reports error responses so).
    nan_batch = images(1, seed=2)
    nan_batch[0, 0, 0, 0] = np.nan
    with pytest.raises(InferenceServerException, match="NaN or infinity"):
        http_infer(http, nan_batch)
    # Pixels at float32's limit: finite input the model turns into NaN logits. The model fails, and
    # Triton counts each such request as a failure (reason BACKEND).
    broken = np.full((2, 1, 8, 8), np.finfo(np.float32).max, dtype=np.float32)
    for _ in range(3):
        with pytest.raises(InferenceServerException, match="produced NaN or infinity"):
            http_infer(http, broken)

    after = scrape(served.server)
    succeeded = delta(before, after, queries.SUCCESS)
    failed = delta(before, after, queries.FAILURE)
    assert succeeded == 12 + 1  # 6 HTTP + 6 gRPC requests, and the NaN one
    assert failed == 3
    assert delta(before, after, queries.FAILURE, {"reason": "BACKEND"}) == 3
    # Inferences (samples) of the successful requests, the refused NaN one included.
    assert delta(before, after, "nv_inference_count") == 6 * 2 + 6 * 1 + 1
    assert delta(before, after, queries.DURATION_US) > 0

    quantiles = {
        labels["quantile"]: value
        for name, labels, value in after.samples
        if name == queries.LATENCY_SUMMARY_US and labels.get("model") == MODEL
    }
    assert set(quantiles) >= {"0.5", "0.9", "0.95", "0.99"}
    assert 0 < quantiles["0.5"] <= quantiles["0.95"] <= quantiles["0.99"]

    promql = PromQL(before, after)
    assert promql.eval(queries.success_rate(MODEL)) == pytest.approx(13 / 16)
    assert promql.eval(queries.latency_p95_ms(MODEL)) == pytest.approx(quantiles["0.95"] / 1000)
    mean = delta(before, after, queries.DURATION_US) / succeeded / 1000
    assert promql.eval(queries.mean_latency_ms(MODEL)) == pytest.approx(mean)
    # The queries select by model: another model's name selects nothing (NaN, as in Prometheus).
    assert math.isnan(promql.eval(queries.success_rate("other")))
    # A label of the scrape target that Triton's own series lack (Prometheus adds it) selects nothing here.
    assert math.isnan(promql.eval(queries.latency_p95_ms(MODEL, {"pod": "digits-canary-0"})))


def test_two_servers_share_the_machine_and_stopping_one_ends_its_processes(
    served: Served, tmp_path: Path
) -> None:
    """The local pod runner runs stable and canary pods side by side: separate ports, separate shared
    memory, and a stopped one leaves no stub process behind."""
    second = LocalTriton(served.server.repository, tmp_path / "second")
    with second:
        group = second.pid
        batch = images(2, seed=7)
        np.testing.assert_array_equal(
            http_infer(httpclient.InferenceServerClient(second.http_address), batch),
            http_infer(httpclient.InferenceServerClient(served.server.http_address), batch),
        )
    assert group is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert served.server.ready()


def test_tritonserver_command_runs_the_serving_containers_arguments_locally(tmp_path: Path) -> None:
    """What the local pod runner substitutes for a serving pod's container: the real binary, the
    builder's tritonserver arguments, loopback ports, and the environment the python backend needs."""
    argv, env = tritonserver_command(tmp_path / "models", 18000, 18001, 18002, base_env={"PATH": "/usr/bin"})
    assert Path(argv[0]).name == "tritonserver"
    assert os.access(argv[0], os.X_OK)
    assert argv[1 : 1 + len(tritonserver_args(""))] == tritonserver_args(
        str(tmp_path / "models"), http_port=18000, grpc_port=18001, metrics_port=18002
    )
    assert {"--http-address=127.0.0.1", "--grpc-address=127.0.0.1", "--metrics-address=127.0.0.1"} <= set(
        argv
    )
    backends = next(a for a in argv if a.startswith("--backend-directory=")).split("=", 1)[1]
    assert (Path(backends) / "python" / "triton_python_backend_stub").exists()
    assert env["PATH"] == f"{DEFAULT_TRITON_VENV / 'bin'}:/usr/bin"
    assert (Path(env["LD_LIBRARY_PATH"].split(":")[0]) / "libpython3.11.so.1.0").exists()


def test_a_repository_triton_cannot_load_fails_start_with_the_servers_reason(
    served: Served, tmp_path: Path
) -> None:
    """The builder's repository without its engine (as if the init container had not run): the model
    fails to load, and strict readiness with exit-on-error ends the server rather than leaving a
    process that listens without its model. (tritonserver 2.51 hangs instead when model.py itself is
    missing: the python backend waits for a stub that never starts; fetch-model-repository never
    leaves a repository so.)"""
    models = tmp_path / "models"
    for path in ("digits/config.pbtxt", "digits/1/model.py"):
        (models / path).parent.mkdir(parents=True, exist_ok=True)
        (models / path).write_bytes((served.server.repository / path).read_bytes())
    server = LocalTriton(models, tmp_path / "triton")
    with pytest.raises(TritonUnavailableError, match="tritonserver exited with 1") as failure:
        server.start()
    assert "model.onnx" in str(failure.value)
    assert "failed to load all models" in str(failure.value)
    assert server.pid is None


def test_triton_answers_and_counts_under_the_registry_version_it_serves(
    served: Served, engine: CompiledEngine, s3: LocalS3, tmp_path: Path
) -> None:
    """Issue 17: a ModelVersion registered as W&B v6 (MLflow would say 7) is Triton version 7, not
    1: the published repository's version folder, what a response says (`model_version`, HTTP and
    gRPC), Triton's model metadata and the `version` label of its metrics."""
    version = triton_model_version("v6")
    assert version == triton_model_version("7") == 7
    repository = build_model_repository(
        MODEL, engine.metadata, engine.uri, SPEC, 0, cpu_backend="python", version=version
    )
    uri = publish_repository(store(s3), f"s3://{engine.bucket}/serving", repository)
    assert uri != served.uri  # version 1's repository stays beside it (the stable pods')
    fetched = run_trainer(
        s3,
        ["fetch-model-repository", "--repository-uri", uri, "--repository-dir", str(tmp_path / "models")],
        tmp_path,
    )
    assert fetched["repository"]["digest"] == repository.digest
    assert sorted(p.name for p in (tmp_path / "models" / MODEL).iterdir()) == ["7", "config.pbtxt"]

    with LocalTriton(tmp_path / "models", tmp_path / "triton") as server:
        http = httpclient.InferenceServerClient(server.http_address)
        grpc = grpcclient.InferenceServerClient(server.grpc_address)
        assert http.get_model_metadata(MODEL)["versions"] == ["7"]
        assert http.is_model_ready(MODEL, "7")
        assert not http.is_model_ready(MODEL, "1")
        before = scrape(server)
        batch = images(2, seed=17)
        (expected,) = served.session.run(["logits"], {"images": batch})
        tensor = httpclient.InferInput("images", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        answer = http.infer(MODEL, [tensor])
        assert answer.get_response()["model_version"] == "7"
        np.testing.assert_allclose(answer.as_numpy("logits"), expected, rtol=0, atol=TOLERANCE)
        grpc_tensor = grpcclient.InferInput("images", list(batch.shape), "FP32")
        grpc_tensor.set_data_from_numpy(batch)
        assert grpc.infer(MODEL, [grpc_tensor]).get_response().model_version == "7"
        # Asking for version 7 by name answers; version 1 is not there.
        assert http.infer(MODEL, [tensor], model_version="7").get_response()["model_version"] == "7"
        with pytest.raises(InferenceServerException, match="'digits' version 1 is not found"):
            http.infer(MODEL, [tensor], model_version="1")
        after = scrape(server)
    successes = {
        labels["version"]: value
        for name, labels, value in after.samples
        if name == queries.SUCCESS and labels.get("model") == MODEL
    }
    assert successes == {"7": 3.0}  # every series says 7; none says 1
    assert delta(before, after, queries.SUCCESS, {"version": "7"}) == 3
    # The analysis queries select by model (not version): they measure whichever version answers.
    assert PromQL(before, after).eval(queries.success_rate(MODEL)) == pytest.approx(1.0)
