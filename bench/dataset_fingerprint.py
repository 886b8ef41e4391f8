"""Peak memory of fingerprinting a Dataset prefix, before and after streaming (issue 15, item 10).

    .venv/bin/python bench/dataset_fingerprint.py [--objects 20000] [--json out.json]

A moto S3 server runs in its own process (so its memory is not counted) with `--objects` small
objects under one prefix. Then, in this process under `tracemalloc`, with the operator's own S3
client (`Boto3ObjectStore`, pages of 1000 keys):

- before: what the Dataset reconcile did up to 3c4fc63's parent: the whole listing into a `Manifest`
  (`manifest_from_listing`), its fingerprint, and the manifest as one JSONL string written with
  `put_bytes`;
- after: what it does now: `summarize` over the listing as it arrives (fingerprint, counts, contract
  facts), then the manifest listed again and streamed with `put_stream` (multipart past 8 MiB).

Both compute the same fingerprint (checked). Peak = tracemalloc's peak of Python allocations during
the operation (boto3's parsing of one page included in both); the ratio is before / after. The bench
is not a test: it asserts only that both sides agree, and prints the machine it ran on.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from mlops_operator.builders.dataset import (
    DataSummary,
    Manifest,
    manifest_from_listing,
    manifest_key,
    manifest_lines,
    summarize,
)
from mlops_operator.builders.dataset import listing_entries as stream_entries
from mlops_operator.dev.controlplane import free_port
from mlops_operator.dev.s3 import DEV_ACCESS_KEY_ID, DEV_REGION, DEV_SECRET_ACCESS_KEY
from mlops_operator.integrations.s3 import Boto3ObjectStore, S3Config, S3Credentials, S3Location

T = TypeVar("T")
BUCKET = "bench"
PREFIX = "datasets/many/"


def _start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    import urllib.request  # noqa: PLC0415

    for _ in range(100):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            return proc, endpoint
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("moto_server did not start")


def _client(endpoint: str) -> Any:
    import boto3  # noqa: PLC0415

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=DEV_REGION,
        aws_access_key_id=DEV_ACCESS_KEY_ID,
        aws_secret_access_key=DEV_SECRET_ACCESS_KEY,
    )


def _populate(endpoint: str, objects: int, prefix: str) -> None:
    client = _client(endpoint)
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=BUCKET)

    def put(n: int) -> None:
        client.put_object(Bucket=BUCKET, Key=f"{prefix}shard-{n:08d}.npz", Body=str(n).encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(objects)))


def _clear_manifests(endpoint: str, prefix: str) -> None:
    client = _client(endpoint)
    listed = client.list_objects_v2(Bucket=BUCKET, Prefix=prefix + ".mlops/").get("Contents", [])
    for item in listed:
        client.delete_object(Bucket=BUCKET, Key=item["Key"])


def fingerprint_before(store: Boto3ObjectStore, location: S3Location) -> Any:
    manifest = manifest_from_listing(store.list_objects(location), location.prefix)
    return manifest, manifest.fingerprint


def manifest_before(store: Boto3ObjectStore, location: S3Location, manifest: Manifest) -> None:
    key = manifest_key(location.prefix, manifest.fingerprint)
    store.put_bytes(location.bucket, key, manifest.to_jsonl().encode(), "application/jsonl")


def fingerprint_after(store: Boto3ObjectStore, location: S3Location) -> Any:
    data = summarize(stream_entries(store.list_objects(location), location.prefix))
    return data, data.fingerprint


def manifest_after(store: Boto3ObjectStore, location: S3Location, data: DataSummary) -> None:
    key = manifest_key(location.prefix, data.fingerprint)
    lines = manifest_lines(stream_entries(store.list_objects(location), location.prefix), data.fingerprint)
    store.put_stream(location.bucket, key, lines, "application/jsonl")


def _measure(run: Callable[[], T]) -> tuple[T, int, float]:
    """`run()`'s result, the peak of Python allocations while it ran, and its seconds. What `run`
    keeps from before (the listing handed to the manifest writer) counts in the peak."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return result, peak, seconds


def _compare(endpoint: str, store: Boto3ObjectStore, prefix: str) -> dict[str, Any]:
    location = S3Location(BUCKET, prefix)
    out: dict[str, Any] = {}
    sides: dict[str, Any] = {
        "before": (fingerprint_before, manifest_before),
        "after": (fingerprint_after, manifest_after),
    }
    for name, (fingerprint, manifest) in sides.items():
        _clear_manifests(endpoint, prefix)

        def listing(fingerprint: Any = fingerprint) -> str:
            return str(fingerprint(store, location)[1])

        def whole(fingerprint: Any = fingerprint, manifest: Any = manifest) -> str:
            held, value = fingerprint(store, location)
            manifest(store, location, held)
            return str(value)

        value, fingerprint_peak, fingerprint_seconds = _measure(listing)
        _clear_manifests(endpoint, prefix)
        _, total_peak, total_seconds = _measure(whole)
        out[name] = {
            "fingerprint": value,
            "fingerprint_peak_bytes": fingerprint_peak,
            "fingerprint_seconds": round(fingerprint_seconds, 2),
            "with_manifest_peak_bytes": total_peak,
            "with_manifest_seconds": round(total_seconds, 2),
        }
    assert out["before"]["fingerprint"] == out["after"]["fingerprint"]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=20_000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    proc, endpoint = _start_moto()
    try:
        started = time.perf_counter()
        sizes = [(n, f"{PREFIX}{n}/") for n in sorted({args.objects // 4, args.objects})]
        for objects, prefix in sizes:
            _populate(endpoint, objects, prefix)
        print(
            f"{sum(n for n, _ in sizes)} objects in moto S3 in {time.perf_counter() - started:.1f}s",
            flush=True,
        )
        creds = S3Credentials(DEV_ACCESS_KEY_ID, DEV_SECRET_ACCESS_KEY)
        store = Boto3ObjectStore(S3Config(endpoint, DEV_REGION, creds))
        store.exists(BUCKET, PREFIX)  # the client's own lazy setup, outside every measurement
        report: dict[str, Any] = {}
        for objects, prefix in sizes:
            results = _compare(endpoint, store, prefix)
            report[str(objects)] = results
            for name in ("before", "after"):
                r = results[name]
                listed, written = r["fingerprint_peak_bytes"] / 2**20, r["with_manifest_peak_bytes"] / 2**20
                print(
                    f"{objects:>8} objects {name:>6}: fingerprint peak {listed:7.2f} MiB "
                    f"({r['fingerprint_seconds']:.1f}s), with the manifest written "
                    f"{written:7.2f} MiB ({r['with_manifest_seconds']:.1f}s)",
                    flush=True,
                )
            for what in ("fingerprint_peak_bytes", "with_manifest_peak_bytes"):
                ratio = results["before"][what] / results["after"][what]
                results[f"ratio_{what}"] = round(ratio, 2)
                print(f"{objects:>8} objects  ratio {what}: {ratio:.1f}x")
        machine = f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}"
        print(f"machine: {machine}, Python {platform.python_version()}")
        if args.json:
            args.json.write_text(json.dumps({"machine": machine, **report}, indent=2) + "\n")
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
