"""Drift-check time and peak memory against the number of images in the current data (issue 18).

    .venv-trainer/bin/python bench/drift_check.py [--sizes 1000 10000 100000] [--repeats 1]

Runs `mlops-trainer drift` as the DriftMonitor's Job runs it (a fresh process, the real CLI), against
moto's S3 server on loopback, so a user can size the Job. Setup (not timed): the digits demo data set
(the reference's training data), a digits-cnn trained for one epoch and compiled to ONNX, and one
check that writes the reference profile. The current data sets hold N digits-sized images (8x8,
uint8): the digits resampled with replacement, written in the trainer's format.

Each size is checked twice: with the default MLOPS_DRIFT_MAX_SAMPLES (5000 rows sampled from the
current data: what a default DriftMonitor runs) and with every row (max samples = N). Wall time is the
child's, start to exit (imports included), CPU time its user + system time (less sensitive to other
load on shared cores); peak memory is the child's ru_maxrss from wait4. Ratios
are against the 1k run of the same mode.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import numpy as np
from mlops_contract import drift as contract
from mlops_trainer.demo_data import digits_splits, write_digits_to_store, write_image_dataset
from mlops_trainer.storage import S3ObjectStore
from moto.server import ThreadedMotoServer

BUCKET = "drift-bench"
ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench-secret",
    "AWS_REGION": "us-east-1",
    "WANDB_MODE": "disabled",
    "PYTHONUNBUFFERED": "1",
}


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "python": platform.python_version()}


def run_cli(args: list[str], env: dict[str, str], work: Path) -> tuple[float, float, int, dict[str, Any]]:
    """Run `mlops-trainer <args>`; returns (wall s, CPU s (user + system), peak RSS bytes, summary)."""
    termination = work / f"termination-{time.monotonic_ns()}"
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "mlops_trainer", *args, "--termination-message-path", str(termination)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    # wait4 gives this child's own rusage (RUSAGE_CHILDREN would be the max over all children so far).
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    stderr = process.stderr.read().decode() if process.stderr else ""
    if process.returncode != 0:
        raise SystemExit(f"mlops-trainer {args[0]} exited {process.returncode}:\n{stderr[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    return wall, cpu, usage.ru_maxrss * 1024, json.loads(termination.read_bytes())  # ru_maxrss: KiB


def current_images(count: int, seed: int = 1) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """`count` digits drawn with replacement from all 1797 (the training distribution)."""
    splits = digits_splits()
    images = np.concatenate([splits["train"][0], splits["test"][0]])
    labels = np.concatenate([splits["train"][1], splits["test"][1]])
    chosen = np.random.default_rng(seed).integers(0, len(labels), size=count)
    return images[chosen], labels[chosen]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--repeats", type=int, default=1, help="runs per size and mode (median kept)")
    parser.add_argument("--shard-records", type=int, default=1024)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request

    port = 5000 + os.getpid() % 1000
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "AWS_", "WANDB_"))}
    env |= ENV | {"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}"}
    client = boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL_S3"],
        region_name="us-east-1",
        aws_access_key_id=ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=ENV["AWS_SECRET_ACCESS_KEY"],
    )
    client.create_bucket(Bucket=BUCKET)
    s3 = f"s3://{BUCKET}"
    rows: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory() as scratch:
            work = Path(scratch)
            write_digits_to_store(S3ObjectStore(BUCKET, "datasets/digits", client))
            hyperparameters = json.dumps({"epochs": 1, "batchSize": 64, "numWorkers": 0})
            run_cli(
                ["train", "--model", "digits-cnn", "--dataset-uri", f"{s3}/datasets/digits",
                 "--output-uri", f"{s3}/models/bench", "--hyperparameters", hyperparameters,
                 "--work-dir", str(work)],
                env, work,
            )  # fmt: skip
            run_cli(
                ["compile", "--model-uri", f"{s3}/models/bench", "--output-uri", f"{s3}/engines/bench",
                 "--target", "onnx", "--max-batch-size", "256"],
                env, work,
            )  # fmt: skip
            base = ["drift", "--engine-uri", f"{s3}/engines/bench",
                    "--reference-uri", f"{s3}/references/bench",
                    "--reference-dataset-uri", f"{s3}/datasets/digits"]  # fmt: skip
            wall, _, rss, _ = run_cli(
                [*base, "--dataset-uri", f"{s3}/datasets/digits", "--output-uri", f"{s3}/checks/first"],
                env,
                work,
            )
            print(
                f"first check (writes the 1437-row reference): {wall:.2f} s, {rss / 2**20:.0f} MiB",
                flush=True,
            )
            for size in options.sizes:
                images, labels = current_images(size)
                prefix = f"datasets/current-{size}"
                write_image_dataset(
                    S3ObjectStore(BUCKET, prefix, client), {"test": (images, labels)},
                    shard_records=options.shard_records,
                )  # fmt: skip
                for mode, max_samples in (("default", contract.MAX_SAMPLES), ("all rows", size)):
                    runs = []
                    for attempt in range(options.repeats):
                        runs.append(
                            run_cli(
                                [
                                    *base,
                                    "--dataset-uri",
                                    f"{s3}/{prefix}",
                                    "--max-samples",
                                    str(max_samples),
                                    "--output-uri",
                                    f"{s3}/checks/{size}-{max_samples}-{attempt}",
                                ],
                                env,
                                work,
                            )
                        )
                    runs.sort(key=lambda run: run[0])
                    wall, _, rss, summary = runs[len(runs) // 2]
                    cpu = sorted(run[1] for run in runs)[len(runs) // 2]
                    row = {
                        "images": size,
                        "mode": mode,
                        "rows": summary[contract.DRIFT][contract.CURRENT_ROWS],
                        "wall_s": round(wall, 3),
                        "cpu_s": round(cpu, 3),
                        "peak_rss_mib": round(rss / 2**20, 1),
                        "drifted": summary[contract.DRIFT][contract.DRIFTED],
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        server.stop()

    info = machine()
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, Python {info['python']}")
    print(
        f"{'images':>8} {'mode':>9} {'rows':>7} {'wall s':>8} {'x 1k':>6} {'CPU s':>7} {'x 1k':>6}"
        f" {'peak MiB':>9} {'x 1k':>6}"
    )
    for row in rows:
        baseline = next(r for r in rows if r["mode"] == row["mode"] and r["images"] == min(options.sizes))
        print(
            f"{row['images']:>8} {row['mode']:>9} {row['rows']:>7} {row['wall_s']:>8.2f}"
            f" {row['wall_s'] / baseline['wall_s']:>6.2f} {row['cpu_s']:>7.2f}"
            f" {row['cpu_s'] / baseline['cpu_s']:>6.2f} {row['peak_rss_mib']:>9.0f}"
            f" {row['peak_rss_mib'] / baseline['peak_rss_mib']:>6.2f}"
        )
    if options.json:
        options.json.write_text(json.dumps({"machine": info, "rows": rows}, indent=2))
    # Peak memory of this process too (moto holds every object in memory).
    own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"benchmark process peak RSS (moto's objects): {own_peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
