"""`mlopsctl dev`: the sample pipeline on a local control plane, start to finish.

Starts the control plane (simulated GPU nodes), the local S3 server with the digits demo data, a
local MLflow server (the model registry), the operator, and the local pod runner (which runs
workload containers as local processes: the real trainer trains, compiles and evaluates for real),
applies `samples/`, and waits until each stage has reached its goal: the Dataset Ready, the
TrainingRun Succeeded, the ModelVersion Ready (registered). It prints what `kubectl get mlops` and
the events show and the registered version, predicts through Triton, starts the canary of a second
version, then runs the drift loop (drift_loop.py: a drifted batch, Drifted, labelled data, a retrained
version that beats the champion and is promoted through the canary). It exits non-zero naming the
first stage that did not reach its goal, with that stage's reason. With `keep`, everything stays up
until Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import config
from mlops_contract import envvars

from ..api.v1alpha1 import kind_by_name
from . import kueue as kueue_docs
from .controlplane import KWOK_TOLERATION, ControlPlane, GpuNodePool, free_port, kueue_built
from .drift_loop import DriftLoop, StageFailedError, read_images, triton_infer
from .mlflow import DEFAULT_MLFLOW_BIN, LocalMlflow
from .runner import LocalPodRunner, ServingRuntime
from .s3 import DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY, LOOPBACK_ENDPOINTS, LocalS3

SAMPLE_S3_PORT = 5000  # samples/01-dataset.yaml names http://127.0.0.1:5000 ...
SAMPLE_DATA_URI = "s3://mlops-demo/datasets/digits/v1"  # ... and this prefix
SAMPLE_MLFLOW_PORT = 5050  # samples/03-modelversion.yaml names http://127.0.0.1:5050
TRAINER = Path(".venv-trainer/bin/mlops-trainer")
# Each stage's goal, and the phases from which it will not get there by itself.
GOALS = {
    "Dataset": "Ready",
    "TrainingRun": "Succeeded",
    "ModelVersion": "Ready",
    "InferenceDeployment": "Available",
}
GIVEN_UP = {
    "Dataset": ("Failed",),
    "TrainingRun": ("Failed",),
    "ModelVersion": ("Failed", "Rejected"),
    "InferenceDeployment": ("Failed", "Degraded"),
}


def _say(message: str) -> None:
    print(f"==> {message}", flush=True)


def _load_samples(samples: Path) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(samples.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _get(plane: ControlPlane, namespace: str, doc: dict[str, Any]) -> dict[str, Any]:
    plural = kind_by_name(doc["kind"]).plural
    out = plane.kubectl("get", plural, doc["metadata"]["name"], "-n", namespace, "-o", "json", check=False)
    obj: dict[str, Any] = json.loads(out.stdout) if out.returncode == 0 else {}
    return obj


def _ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    conditions = obj.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == "Ready"), {})


def _reached(doc: dict[str, Any], obj: dict[str, Any]) -> bool:
    """Whether the object is where its stage wants it (a Dataset: Ready, not just Pending)."""
    phase = obj.get("status", {}).get("phase")
    if doc["kind"] == "Dataset":
        return _ready_condition(obj).get("status") == "True"
    return bool(phase == GOALS[doc["kind"]])


def _wait_stages(
    plane: ControlPlane, namespace: str, docs: list[dict[str, Any]], timeout: float
) -> str | None:
    """Wait until every staged object reached its goal; None, or what the first stage that did not
    (or cannot any more) reach it says."""
    staged = [d for d in docs if d["kind"] in GOALS]
    deadline = time.monotonic() + timeout
    while True:
        objs = [(doc, _get(plane, namespace, doc)) for doc in staged]
        for doc, obj in objs:
            if obj.get("status", {}).get("phase") in GIVEN_UP[doc["kind"]]:
                return _verdict(doc, obj)
        pending = [(doc, obj) for doc, obj in objs if not _reached(doc, obj)]
        if not pending:
            return None
        if time.monotonic() > deadline:
            return _verdict(*pending[0]) + f" (still so after {timeout:.0f}s)"
        time.sleep(1)


def _verdict(doc: dict[str, Any], obj: dict[str, Any]) -> str:
    ready = _ready_condition(obj)
    phase = obj.get("status", {}).get("phase") or "not reconciled"
    return (
        f"stage {doc['kind']} {doc['metadata']['name']} did not reach {GOALS[doc['kind']]}: phase {phase}, "
        f"reason {ready.get('reason', 'none')}: {ready.get('message', '')}"
    )


def _write_demo_data(s3: LocalS3, workdir: Path) -> None:
    env = {
        **os.environ,
        envvars.AWS_ENDPOINT_URL_S3: s3.endpoint_url,
        envvars.AWS_ACCESS_KEY_ID: DEV_ACCESS_KEY_ID,
        envvars.AWS_SECRET_ACCESS_KEY: DEV_SECRET_ACCESS_KEY,
        envvars.TERMINATION_MESSAGE_PATH: str(workdir / "demo-data.json"),
    }
    subprocess.run(
        [str(TRAINER), "write-demo-data", "--dataset-uri", SAMPLE_DATA_URI],
        env=env,
        check=True,
        timeout=300,
        stdout=subprocess.DEVNULL,
    )


def _start_operator(plane: ControlPlane, namespace: str, log: Path) -> subprocess.Popen[bytes]:
    loopback = json.dumps(LOOPBACK_ENDPOINTS)
    env = {
        **os.environ,
        "KUBECONFIG": str(plane.operator_kubeconfig),
        "MLOPS_NAMESPACES": json.dumps([namespace]),
        "MLOPS_METRICS_PORT": str(free_port()),
        "MLOPS_HEALTH_PORT": str(free_port()),
        "MLOPS_WORKLOAD_TOLERATIONS": json.dumps([KWOK_TOLERATION]),
        "MLOPS_S3_ENDPOINT_ALLOWLIST": loopback,
        "MLOPS_REGISTRY_ENDPOINT_ALLOWLIST": loopback,  # the local MLflow server
        # The local tritonserver (nvidia-pytriton's) has only the python backend: ONNX on CPU runs there.
        "MLOPS_TRITON_CPU_BACKEND": "python",
        "MLOPS_PROMETHEUS_ADDRESS": plane.prometheus_url,
    }
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "mlops_operator.cli", "run"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


# What the demo shows of each stage's status: the outcome, the numbers, and where things went.
REPORTED = {
    "TrainingRun": (
        "phase",
        "attempt",
        "metrics",
        "modelURI",
        "checkpointURI",
        "wandbRun",
        "datasetFingerprint",
    ),
    "ModelVersion": ("phase", "accuracy", "metrics", "gates", "engine", "lineage", "registry"),
}


def _status_report(plane: ControlPlane, namespace: str, doc: dict[str, Any]) -> str:
    """The reported fields the object's status has (none is printed as null), or why there are none:
    never a bare `{}`."""
    name = doc["metadata"]["name"]
    plural = kind_by_name(doc["kind"]).plural
    out = plane.kubectl("get", plural, name, "-n", namespace, "-o", "json", check=False)
    if out.returncode != 0:
        return f"{doc['kind']} {name}: cannot be read: {out.stderr.strip() or out.stdout.strip()}"
    status = json.loads(out.stdout).get("status") or {}
    shown = {k: status[k] for k in REPORTED[doc["kind"]] if status.get(k) not in (None, {}, [])}
    if not shown:
        ready = _ready_condition({"status": status})
        why = f"{ready.get('reason')}: {ready.get('message')}" if ready else "not reconciled yet"
        return f"{doc['kind']} {name}: no results in its status ({why})"
    return f"{doc['kind']} {name}:\n{json.dumps(shown, indent=2)}"


def _report(plane: ControlPlane, namespace: str, docs: list[dict[str, Any]]) -> None:
    print(plane.kubectl("get", "mlops", "-n", namespace, check=False).stdout, flush=True)
    print(plane.kubectl("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout)
    for doc in docs:
        if doc["kind"] in REPORTED:
            print(_status_report(plane, namespace, doc), flush=True)


def _print_registered(plane: ControlPlane, namespace: str, docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if doc["kind"] != "ModelVersion":
            continue
        registry = _get(plane, namespace, doc).get("status", {}).get("registry") or {}
        if registry.get("version"):
            aliases = ", ".join(registry.get("aliases") or []) or "none"
            _say(
                f"registered: {registry.get('provider')} model {registry.get('modelName')} version "
                f"{registry['version']} (aliases: {aliases}) {registry.get('url') or ''}"
            )


def _first(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def _predict(
    plane: ControlPlane, namespace: str, docs: list[dict[str, Any]], runner: LocalPodRunner, s3: LocalS3
) -> None:
    """One digits image of the held-out split through Triton's HTTP API, and the lineage of what
    answered."""
    import numpy as np  # noqa: PLC0415

    idep = _get(plane, namespace, _first(docs, "InferenceDeployment"))
    mv = _get(plane, namespace, _first(docs, "ModelVersion"))
    run = _get(plane, namespace, _first(docs, "TrainingRun"))
    image, labels = read_images(s3, SAMPLE_DATA_URI.removeprefix("s3://mlops-demo/"), 1)
    label = int(labels[0])
    url = _triton_ready(runner)
    model = mv["spec"]["modelName"]
    logits = triton_infer(url, model, image).ravel()
    predicted = int(np.argmax(logits))
    registry = mv["status"].get("registry") or {}
    lineage = mv["status"].get("lineage") or {}
    _say(
        f"Triton ({url}, in-cluster {idep['status'].get('endpoint')}) predicts {predicted} "
        f"for a test image of a {label}"
    )
    _say(
        "lineage of the answer: InferenceDeployment "
        f"{idep['metadata']['name']} -> ModelVersion {mv['metadata']['name']} -> {registry.get('provider')} "
        f"{registry.get('modelName')} version {registry.get('version')} -> "
        f"TrainingRun {run['metadata']['name']} -> Dataset {lineage.get('dataset')} "
        f"at {lineage.get('datasetFingerprint')}"
    )
    _load_with_mlflow(plane, namespace, docs, image, np.asarray(logits, dtype=np.float32))


# A data scientist's few lines: load a registered version with MLflow's own client (in the MLflow
# venv, which has mlflow, onnx and onnxruntime) and predict; its outputs as JSON on the last line.
_MLFLOW_LOAD = """
import json, sys
import mlflow.pyfunc, numpy as np
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
out = model.predict(np.asarray(json.loads(sys.argv[3]), dtype=np.float32))
out = next(iter(out.values())) if isinstance(out, dict) else out
print(json.dumps(np.asarray(out).tolist()))
"""


def serving_model_uri(idep_status: dict[str, Any], mv_status: dict[str, Any]) -> str | None:
    """The `models:/` URI of what serves: by the serving alias once the registry has it on the
    served version, else by the version's number; None without a registered version."""
    registry = mv_status.get("registry") or {}
    if not registry.get("version"):
        return None
    applied = idep_status.get("registry") or {}
    if applied.get("stableAlias") and applied.get("stableRegistryVersion") == registry["version"]:
        return f"models:/{registry['modelName']}@{applied['stableAlias']}"
    return f"models:/{registry['modelName']}/{registry['version']}"


def _load_with_mlflow(
    plane: ControlPlane, namespace: str, docs: list[dict[str, Any]], image: Any, triton_logits: Any
) -> None:
    import numpy as np  # noqa: PLC0415

    idep_doc, mv = _first(docs, "InferenceDeployment"), _get(plane, namespace, _first(docs, "ModelVersion"))
    if ((mv["spec"].get("registry") or {}).get("provider")) != "mlflow":
        return
    deadline = time.monotonic() + 30  # the serving alias follows Available within a reconcile or two
    while True:
        idep = _get(plane, namespace, idep_doc)
        uri = serving_model_uri(idep.get("status") or {}, mv.get("status") or {})
        if uri is None or "@" in uri or time.monotonic() > deadline:
            break
        time.sleep(1)
    if uri is None:
        return
    tracking = mv["spec"]["registry"]["trackingURI"]
    _say(f"what serves, in the registry: {uri} (tracking URI {tracking})")
    python = DEFAULT_MLFLOW_BIN.parent / "python"
    done = subprocess.run(
        [str(python), "-c", _MLFLOW_LOAD, tracking, uri, json.dumps(image.tolist())],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        _say(f"loading {uri} with mlflow.pyfunc failed:\n{done.stderr[-2000:]}")
        return
    outputs = np.asarray(json.loads(done.stdout.strip().splitlines()[-1]), dtype=np.float32)
    difference = float(np.max(np.abs(outputs.ravel() - triton_logits.ravel())))
    _say(
        f"mlflow.pyfunc.load_model('{uri}') predicts {int(np.argmax(outputs))}, as Triton does "
        f"(largest logit difference {difference:.2g})"
    )


def _triton_ready(runner: LocalPodRunner, timeout: float = 120) -> str:
    """The URL of a serving pod's tritonserver once it answers ready (kwok's Ready is not Triton's)."""
    import urllib.error  # noqa: PLC0415
    import urllib.request  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for url in list(runner.endpoints.values()):
            try:
                with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as response:  # noqa: S310
                    if response.status == 200:
                        return url
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.5)
    raise RuntimeError(f"no serving pod's tritonserver was ready within {timeout:.0f}s")


def _second_version(plane: ControlPlane, namespace: str, docs: list[dict[str, Any]]) -> None:
    """A second ModelVersion of the same run, served: the InferenceDeployment starts a canary."""
    first = _first(docs, "ModelVersion")
    second = json.loads(json.dumps(first))
    second["metadata"] = {
        "name": first["metadata"]["name"].removesuffix("-v1") + "-v2",
        "namespace": namespace,
    }
    second["spec"]["registry"]["aliases"] = ["challenger"]
    _say(f"applying ModelVersion {second['metadata']['name']} and pointing the InferenceDeployment at it")
    plane.kubectl_apply([second])
    deadline = time.monotonic() + 300
    while _get(plane, namespace, second).get("status", {}).get("phase") != "Ready":
        if time.monotonic() > deadline:
            _say("the second ModelVersion did not become Ready in time")
            return
        time.sleep(1)
    idep = _first(docs, "InferenceDeployment")
    name = idep["metadata"]["name"]
    plane.kubectl(
        "patch", "inferencedeployment", name, "-n", namespace, "--type=merge",
        "-p", json.dumps({"spec": {"modelVersionRef": {"name": second["metadata"]["name"]}}}),
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (_get(plane, namespace, idep).get("status", {}).get("canaryVersion")):
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    print(plane.kubectl("get", "idep", "-n", namespace, check=False).stdout, flush=True)


# What `mlopsctl dev --kueue` sets up: a flavor for the simulated H100 nodes, a ClusterQueue of all
# their GPUs, and a LocalQueue `default` in the demo namespace (spec.scheduling.queueName: default).
DEV_KUEUE_FLAVOR = "h100"
DEV_CLUSTER_QUEUE = "dev"
DEV_LOCAL_QUEUE = "default"


def _kueue_queues(plane: ControlPlane, namespace: str) -> None:
    pool = plane.node_pools[0]
    plane.kubectl_apply(
        [
            kueue_docs.resource_flavor(DEV_KUEUE_FLAVOR, pool.gpu_product),
            kueue_docs.cluster_queue(
                DEV_CLUSTER_QUEUE,
                [
                    kueue_docs.FlavorQuota(
                        DEV_KUEUE_FLAVOR, cpu="1000", memory="8Ti", gpus=pool.count * pool.gpus_per_node
                    )
                ],
            ),
            kueue_docs.local_queue(namespace, DEV_LOCAL_QUEUE, DEV_CLUSTER_QUEUE),
        ]
    )


def run(
    samples: Path, crds: Path, *, namespace: str = "mlops-demo", keep: bool = False, kueue: bool = False
) -> int:
    if not os.access(TRAINER, os.X_OK):
        _say(f"{TRAINER} is missing: run `make trainer` (make dev does)")
        return 1
    # SIGTERM would end Python without running `finally`, leaving the control plane behind.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if kueue and not kueue_built():
        _say("--kueue: Kueue is not built: run hack/build-tools.sh (make tools)")
        return 1
    plane = ControlPlane(
        node_pools=(GpuNodePool(count=2, gpus_per_node=8),), argo_rollouts=True, prometheus=True, kueue=kueue
    )
    s3 = LocalS3(port=SAMPLE_S3_PORT)
    mlflow: LocalMlflow | None = None
    operator: subprocess.Popen[bytes] | None = None
    runner: LocalPodRunner | None = None
    try:
        _say("starting the control plane (etcd, kube-apiserver, controller-manager, scheduler, kwok)")
        plane.start()
        _say(f"control plane up in {plane.startup_seconds:.1f}s; kubeconfig: {plane.kubeconfig}")
        plane.install_crds(crds)
        _say(f"local S3 (moto) on {s3.endpoint_url}; writing the digits demo data set to {SAMPLE_DATA_URI}")
        s3.start()
        s3.client().create_bucket(Bucket="mlops-demo")
        _write_demo_data(s3, plane.workdir)
        s3.client().create_bucket(Bucket="mlflow-artifacts")
        mlflow = LocalMlflow(
            workdir=plane.workdir / "mlflow", s3_endpoint_url=s3.endpoint_url, port=SAMPLE_MLFLOW_PORT
        )
        _say(f"local MLflow server (the model registry) on {mlflow.tracking_uri}")
        mlflow.start()
        plane.kubectl("create", "namespace", namespace)
        if kueue:
            _kueue_queues(plane, namespace)
            _say(
                f"Kueue up ({plane.kueue_startup_seconds:.1f}s): ClusterQueue {DEV_CLUSTER_QUEUE}, "
                f"LocalQueue {DEV_LOCAL_QUEUE} in {namespace}"
            )
        plane.kubectl(
            "create", "secret", "generic", "s3-credentials", "-n", namespace,
            f"--from-literal=AWS_ACCESS_KEY_ID={DEV_ACCESS_KEY_ID}",
            f"--from-literal=AWS_SECRET_ACCESS_KEY={DEV_SECRET_ACCESS_KEY}",
        )  # fmt: skip
        log = plane.workdir / "operator.log"
        _say(f"starting the operator (log: {log}) and the local pod runner")
        operator = _start_operator(plane, namespace, log)
        runner = LocalPodRunner(
            config.new_client_from_config(config_file=str(plane.kubeconfig)),  # type: ignore[no-untyped-call]
            namespace,
            executables={"mlops-trainer": str(TRAINER.resolve())},
            serving=ServingRuntime(sd_file=plane.prometheus_sd_file),
        )
        runner.start()
        docs = _load_samples(samples)
        _say(
            f"applying {len(docs)} sample objects to namespace {namespace}; the trainer trains for real (CPU)"
        )
        plane.kubectl_apply([{**d, "metadata": {**d["metadata"], "namespace": namespace}} for d in docs])
        failed = _wait_stages(plane, namespace, docs, timeout=900)
        _report(plane, namespace, docs)
        if failed:
            _say(f"the sample pipeline stopped short: {failed}")
            _say("the operator's log ends with:")
            print(log.read_text()[-4000:])
            return 1
        _print_registered(plane, namespace, docs)
        _predict(plane, namespace, docs, runner, s3)
        _second_version(plane, namespace, docs)
        loop = DriftLoop(plane, namespace, docs, runner, s3, TRAINER.parent / "python")
        try:
            loop.run()
        except StageFailedError as stopped:
            print(plane.kubectl("get", "mlops", "-n", namespace, check=False).stdout, flush=True)
            _say(f"the sample pipeline stopped short: {stopped}")
            _say("the operator's log ends with:")
            print(log.read_text()[-4000:])
            return 1
        _say(
            "done: the Dataset was validated, the TrainingRun trained, the ModelVersion was compiled, "
            "evaluated, gated and registered, Triton served it, a second version started a canary; a "
            "drifted batch turned the DriftMonitor Drifted, the pipeline retrained on labelled data that "
            "covers the shift, beat the champion on it and promoted through the canary"
        )
        if keep:
            _say(f"kept running; in another shell: export KUBECONFIG={plane.kubeconfig}  (Ctrl-C stops)")
            while operator.poll() is None:
                time.sleep(1)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if runner is not None:
            runner.stop()
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(timeout=15)
            except subprocess.TimeoutExpired:
                operator.kill()
        if mlflow is not None:
            mlflow.stop()
        s3.stop()
        plane.stop()
