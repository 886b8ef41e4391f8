"""Training throughput of `mlops-trainer train` against a bare PyTorch loop on the same model and data.

    .venv-trainer/bin/python bench/trainer_throughput.py [--epochs 6] [--repeats 3] [--device auto]

Both sides train the registry's digits-cnn on the digits data set (written to a local folder, read
back through the trainer's own loader), with the same batch size, optimizer and precision (bf16
autocast on CUDA). The bare loop is the plainest fast loop: the whole training split on the device,
one shuffled index per epoch, slicing - no DataLoader, no metrics, no checkpoints. The trainer runs
as the operator runs it (DataLoader, per-step metric buffering, periodic checkpoints to a local
folder, end-of-epoch evaluation) and reports `train_samples_per_second`, which excludes its
start-up, per-epoch evaluation and the final export but includes everything else in the loop.
Runs alternate (bare, trainer, bare, trainer, ...) and the medians are compared. Target: ratio >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from mlops_trainer.config import Hyperparameters, TrackingSettings, TrainSettings
from mlops_trainer.dataset import load_split
from mlops_trainer.demo_data import write_digits_to_store
from mlops_trainer.distributed import init_distributed
from mlops_trainer.models import get_architecture
from mlops_trainer.storage import LocalObjectStore
from mlops_trainer.train import Trainer, build_optimizer, seed_everything, use_bf16
from torch import nn


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
    return info


def bare_loop(data_dir: Path, params: Hyperparameters, device: torch.device) -> float:
    """Samples per second of the simplest loop that trains the same model on the same data."""
    split = load_split(LocalObjectStore(data_dir), "train")
    features = torch.from_numpy(split.features).to(device)
    labels = torch.from_numpy(split.labels).to(device)
    seed_everything(params.seed, params.deterministic)
    model = get_architecture("digits-cnn").build(split.schema.num_classes).to(device)
    optimizer = build_optimizer(model, params)
    loss_fn = nn.CrossEntropyLoss()
    bf16 = use_bf16(params, device)
    generator = torch.Generator().manual_seed(params.seed)
    model.train()
    samples = 0
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(params.epochs):
        order = torch.randperm(len(labels), generator=generator).to(device)
        for start in range(0, len(labels), params.batch_size):
            index = order[start : start + params.batch_size]
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = loss_fn(model(features[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            samples += len(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return samples / (time.perf_counter() - started)


def trainer_loop(data_dir: Path, work: Path, params: Hyperparameters, device: str) -> dict[str, Any]:
    settings = TrainSettings(
        model="digits-cnn",
        dataset_uri=str(data_dir),
        output_uri=str(work / "out"),
        hyperparameters=params,
        checkpoint_uri=str(work / "checkpoints"),
        checkpoint_interval_steps=500,
        run_name="bench",
        device=device,
        work_dir=str(work),
        tracking=TrackingSettings(mode="disabled"),
    )
    return Trainer(settings, init_distributed(device)).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (default: auto)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()

    params = Hyperparameters(epochs=args.epochs, batch_size=args.batch_size, num_workers=args.num_workers)
    ctx = init_distributed(args.device)
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "digits"
        write_digits_to_store(LocalObjectStore(data_dir))
        bare_loop(data_dir, params, ctx.device)  # warm-up: allocator, kernels, autotuning
        bare: list[float] = []
        trainer: list[float] = []
        accuracy = 0.0
        for repeat in range(args.repeats):
            bare.append(bare_loop(data_dir, params, ctx.device))
            result = trainer_loop(data_dir, Path(folder) / f"run-{repeat}", params, args.device)
            trainer.append(float(result["metrics"]["train_samples_per_second"]))
            accuracy = float(result["metrics"]["accuracy"])
    report = {
        "machine": machine(),
        "device": str(ctx.device),
        "precision": "bf16" if use_bf16(params, ctx.device) else "fp32",
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "num_workers": params.resolved_workers(),
        "bare_samples_per_second": [round(v, 1) for v in bare],
        "trainer_samples_per_second": [round(v, 1) for v in trainer],
        "trainer_accuracy": round(accuracy, 4),
        "ratio": round(statistics.median(trainer) / statistics.median(bare), 3),
        "target": 0.95,
    }
    print(json.dumps(report, indent=2))
    print(
        f"trainer/bare throughput ratio {report['ratio']} (target >= 0.95) on {report['device']}"
        f" [{report['machine'].get('gpu', report['machine']['cpu'])}, {report['machine']['cores']} cores,"
        f" torch {report['machine']['torch']}]",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
