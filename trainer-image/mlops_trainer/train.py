"""The `train` command: a PyTorch training loop with DDP, bf16 autocast, checkpoints and tracking."""

from __future__ import annotations

import io
import json
import logging
import math
import os
import platform
import random
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Sampler

from . import __version__
from .checkpoint import CheckpointStore
from .config import Hyperparameters, TrainSettings
from .dataset import SplitData, check_fingerprint, load_split
from .distributed import DistributedContext, init_distributed, shutdown_distributed
from .errors import ConfigError, PreemptedError, TrainerError
from .export import INPUT_NAME, OPSET, OUTPUT_NAME, check_parity, export_onnx
from .models import Architecture, get_architecture
from .storage import open_store, sha256_hex
from .tracking import Tracker, create_tracker

log = logging.getLogger(__name__)

MODEL_KEY = "model.pt"
ONNX_KEY = "model.onnx"
METADATA_KEY = "metadata.json"
METADATA_SCHEMA = "mlops.dev/model-metadata/v1"
# One held-out sample as the model takes it, in MLflow's input-example layouts (a batch of one as
# nested lists; the same under "inputs" for a serving request): the registered MLflow Model's
# input example, so users see what the model takes without reading the data.
INPUT_EXAMPLE_KEY = "input_example.json"
SERVING_INPUT_EXAMPLE_KEY = "serving_input_example.json"


class PreemptionFlag:
    """Turns SIGTERM (eviction, preemption, Job deletion, suspend) into a flag the loop polls.

    The loop finishes its step, checkpoints and exits with the retryable code, inside the pod's
    termination grace period.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested = True

    def __enter__(self) -> PreemptionFlag:
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        signal.signal(signal.SIGTERM, self._previous)


class InMemoryDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Tensors in (shared) memory; `__getitems__` hands a worker a whole batch in one call."""

    def __init__(self, split: SplitData) -> None:
        self.features = torch.from_numpy(split.features)
        self.labels = torch.from_numpy(split.labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features[index], self.labels[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.tensor(indices)
        return self.features[index], self.labels[index]


def _whole_batch(batch: Any) -> Any:
    """`InMemoryDataset.__getitems__` already returns a collated batch."""
    return batch


class EpochBatchSampler(Sampler[list[int]]):
    """Seeded per-epoch shuffle, sharded over ranks like DistributedSampler, resumable mid-epoch.

    The order depends only on (seed, epoch), so a resumed run skips exactly the batches the
    checkpointed run had consumed and then sees the same batches the uninterrupted run would.
    """

    def __init__(self, num_samples: int, batch_size: int, *, rank: int, world_size: int, seed: int) -> None:
        super().__init__()
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.per_rank = math.ceil(num_samples / world_size)
        self.batches_per_epoch = math.ceil(self.per_rank / batch_size)
        self.epoch = 0
        self.skip_batches = 0

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch = epoch
        self.skip_batches = skip_batches

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        order += order[: self.per_rank * self.world_size - self.num_samples]  # pad so ranks get equal shares
        mine = order[self.rank :: self.world_size]
        for start in range(self.skip_batches * self.batch_size, len(mine), self.batch_size):
            yield mine[start : start + self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.skip_batches


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def capture_rng() -> dict[str, Any]:
    name, keys, position, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(np.asarray(keys, dtype=np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_optimizer(model: nn.Module, params: Hyperparameters) -> torch.optim.Optimizer:
    if params.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=params.learning_rate,
            momentum=params.momentum,
            weight_decay=params.weight_decay,
        )
    return torch.optim.AdamW(model.parameters(), lr=params.learning_rate, weight_decay=params.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, params: Hyperparameters, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = params.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if params.scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def use_bf16(params: Hyperparameters, device: torch.device) -> bool:
    if params.precision == "fp32":
        return False
    if params.precision == "bf16" and device.type != "cuda":
        raise ConfigError("precision bf16 needs a CUDA device; use auto or fp32 on CPU")
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


@torch.no_grad()
def evaluate_model(
    model: nn.Module,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device,
    bf16: bool,
    batch_size: int = 512,
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, len(labels), batch_size):
        x = features[start : start + batch_size].to(device, non_blocking=True)
        y = labels[start : start + batch_size].to(device, non_blocking=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        total_loss += nn.functional.cross_entropy(logits.float(), y, reduction="sum")
        correct += (logits.argmax(dim=1) == y).sum()
    model.train(was_training)
    count = max(1, len(labels))
    return {"loss": float(total_loss.item()) / count, "accuracy": float(correct.item()) / count}


@dataclass
class RunState:
    """What a checkpoint carries besides model/optimizer/scheduler weights."""

    global_step: int = 0
    train_seconds: float = 0.0
    samples_seen: int = 0
    wandb_run_id: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def _checkpoint_state(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LambdaLR,
    run: RunState,
    layout: dict[str, Any],
) -> dict[str, Any]:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": capture_rng(),
        "run": {
            "global_step": run.global_step,
            "train_seconds": run.train_seconds,
            "samples_seen": run.samples_seen,
            "wandb_run_id": run.wandb_run_id,
            "history": run.history,
        },
        "layout": layout,
    }


class Trainer:
    def __init__(self, settings: TrainSettings, ctx: DistributedContext) -> None:
        settings.check()
        self.settings = settings
        self.params = settings.hyperparameters
        self.ctx = ctx
        self.started = time.monotonic()
        self.architecture: Architecture = get_architecture(settings.model)
        self.bf16 = use_bf16(self.params, ctx.device)

    def _lineage_fingerprint(self, split: SplitData) -> str:
        """The fingerprint recorded with the model: the one the operator pinned (checked to match the
        data in _load_data), so the model's metadata and the TrainingRun's lineage name the same data."""
        return self.settings.dataset_fingerprint or split.fingerprint

    def _load_data(self) -> tuple[SplitData, SplitData]:
        store = open_store(self.settings.dataset_uri)
        train_split, test_split = load_split(store, "train"), load_split(store, "test")
        if self.settings.dataset_fingerprint:
            check_fingerprint(store, self.settings.dataset_fingerprint, train_split.fingerprint)
        sample_shape = tuple(train_split.features.shape[1:])
        if sample_shape != self.architecture.input_shape:
            raise ConfigError(
                f"model {self.architecture.name} takes inputs {self.architecture.input_shape}, "
                f"the data set has {sample_shape}"
            )
        return train_split, test_split

    def run(self) -> dict[str, Any]:
        params, ctx, settings = self.params, self.ctx, self.settings
        train_split, test_split = self._load_data()
        num_classes = train_split.schema.num_classes
        seed_everything(params.seed, params.deterministic)

        model = self.architecture.build(num_classes).to(ctx.device)
        sampler = EpochBatchSampler(
            len(train_split), params.batch_size, rank=ctx.rank, world_size=ctx.world_size, seed=params.seed
        )
        steps_per_epoch = sampler.batches_per_epoch
        total_steps = params.epochs * steps_per_epoch
        if params.max_steps is not None:
            total_steps = min(total_steps, params.max_steps)
        optimizer = build_optimizer(model, params)
        scheduler = build_scheduler(optimizer, params, total_steps)
        layout = {
            "model": settings.model,
            "world_size": ctx.world_size,
            "batch_size": params.batch_size,
            "steps_per_epoch": steps_per_epoch,
        }

        checkpoints = (
            CheckpointStore(open_store(settings.checkpoint_uri), settings.keep_checkpoints)
            if settings.checkpoint_uri
            else None
        )
        run = RunState(wandb_run_id=settings.tracking.run_id)
        resumed_from: int | None = None
        if checkpoints is not None and (loaded := checkpoints.load_latest()) is not None:
            if loaded.state["layout"] != layout:
                raise ConfigError(
                    f"checkpoint {checkpoints.uri(loaded.record.key)} was written for "
                    f"{loaded.state['layout']}, "
                    f"this run is {layout}; resume needs the same model, world size and batch size"
                )
            model.load_state_dict(loaded.state["model"])
            optimizer.load_state_dict(loaded.state["optimizer"])
            scheduler.load_state_dict(loaded.state["scheduler"])
            restore_rng(loaded.state["rng"])
            saved = loaded.state["run"]
            run = RunState(
                global_step=int(saved["global_step"]),
                train_seconds=float(saved["train_seconds"]),
                samples_seen=int(saved["samples_seen"]),
                wandb_run_id=saved["wandb_run_id"] or run.wandb_run_id,
                history=list(saved["history"]),
            )
            resumed_from = run.global_step
            log.info("resumed from %s at step %d", checkpoints.uri(loaded.record.key), run.global_step)

        bare_model = model
        if ctx.is_distributed:
            model = DistributedDataParallel(
                model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
            )

        tracker = create_tracker(
            settings.tracking,
            enabled=ctx.is_main,
            run_name=settings.run_name,
            run_id=run.wandb_run_id,
            config={
                "model": settings.model,
                "hyperparameters": params.to_json(),
                "dataset": {
                    "uri": settings.dataset_uri,
                    "fingerprint": self._lineage_fingerprint(train_split),
                },
                "world_size": ctx.world_size,
                "device": str(ctx.device),
                "bf16": self.bf16,
                "steps_per_epoch": steps_per_epoch,
                "total_steps": total_steps,
            },
            directory=Path(settings.work_dir),
        )
        describe = tracker.describe()
        if describe is not None:
            run.wandb_run_id = describe["runId"]

        exit_code = 1
        try:
            result = self._loop(
                model=model, bare_model=bare_model, optimizer=optimizer, scheduler=scheduler, sampler=sampler,
                train_split=train_split, test_split=test_split, run=run, total_steps=total_steps,
                checkpoints=checkpoints, layout=layout, tracker=tracker,
            )  # fmt: skip
            result["checkpoint"] = (
                {"uri": checkpoints.uri(), "step": run.global_step, "resumedFromStep": resumed_from}
                if checkpoints
                else None
            )
            if ctx.is_main:
                result |= self._publish(bare_model, test_split, run, result["metrics"], tracker)
            result["wandb"] = tracker.describe()
            exit_code = 0
            return result
        except TrainerError as exc:
            exit_code = int(exc.exit_code)  # W&B shows a preempted run as such, not as a crash
            raise
        finally:
            tracker.finish(exit_code)

    def _loop(
        self,
        *,
        model: nn.Module,
        bare_model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LambdaLR,
        sampler: EpochBatchSampler,
        train_split: SplitData,
        test_split: SplitData,
        run: RunState,
        total_steps: int,
        checkpoints: CheckpointStore | None,
        layout: dict[str, Any],
        tracker: Tracker,
    ) -> dict[str, Any]:
        params, ctx, settings = self.params, self.ctx, self.settings
        device = ctx.device
        pin = device.type == "cuda"
        workers = params.resolved_workers()
        loader = DataLoader(
            InMemoryDataset(train_split),
            batch_sampler=sampler,
            num_workers=workers,
            collate_fn=_whole_batch,
            pin_memory=pin,
            persistent_workers=workers > 0,  # no fork per epoch; sampling stays in this process
            # Its own generator: worker seeds must not draw from the global RNG, or a resumed run's
            # extra iterator would shift the dropout stream away from the uninterrupted run's.
            generator=torch.Generator().manual_seed(params.seed),
        )
        loss_fn = nn.CrossEntropyLoss(label_smoothing=params.label_smoothing)
        test_features = torch.from_numpy(test_split.features)
        test_labels = torch.from_numpy(test_split.labels)
        steps_per_epoch = sampler.batches_per_epoch
        last_saved = run.global_step
        pending_losses: list[torch.Tensor] = []
        pending_lrs: list[float] = []
        samples_this_attempt = 0
        last_train_loss = float("nan")

        def flush() -> None:
            nonlocal last_train_loss
            if not pending_losses:
                return
            # One device sync per flush rather than per step keeps the GPU queue full.
            losses = torch.stack(pending_losses).float().tolist()
            first = run.global_step - len(losses) + 1
            for offset, (loss, lr) in enumerate(zip(losses, pending_lrs, strict=True)):
                tracker.log_metrics({"train/loss": loss, "train/lr": lr}, step=first + offset)
            last_train_loss = float(np.mean(losses))
            pending_losses.clear()
            pending_lrs.clear()

        def save_checkpoint() -> None:
            nonlocal last_saved
            if checkpoints is None or last_saved == run.global_step:
                return
            if ctx.is_main:
                state = _checkpoint_state(bare_model, optimizer, scheduler, run, layout)
                checkpoints.save(state, step=run.global_step, epoch=run.global_step // steps_per_epoch)
            last_saved = run.global_step

        model.train()
        with PreemptionFlag() as preemption:
            while run.global_step < total_steps:
                epoch, skip = divmod(run.global_step, steps_per_epoch)
                sampler.set_epoch(epoch, skip)
                epoch_started = time.perf_counter()
                for images, labels in loader:
                    x = images.to(device, non_blocking=pin)
                    y = labels.to(device, non_blocking=pin)
                    with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=self.bf16):
                        loss = loss_fn(model(x), y)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if params.grad_clip_norm is not None:
                        nn.utils.clip_grad_norm_(model.parameters(), params.grad_clip_norm)
                    optimizer.step()
                    pending_lrs.append(float(scheduler.get_last_lr()[0]))
                    scheduler.step()
                    pending_losses.append(loss.detach())
                    run.global_step += 1
                    samples_this_attempt += len(y) * ctx.world_size
                    boundary = run.global_step % params.log_every_steps == 0
                    if boundary:
                        flush()
                    # Ranks must agree on stopping (a collective); they do so only at flush boundaries.
                    stop = (
                        preemption.requested
                        if not ctx.is_distributed
                        else (boundary and ctx.any_true(preemption.requested))
                    )
                    if stop:
                        flush()
                        save_checkpoint()
                        run.train_seconds += time.perf_counter() - epoch_started
                        raise PreemptedError(
                            f"SIGTERM received: stopped at step {run.global_step} of {total_steps}",
                            details={
                                "steps": run.global_step,
                                "checkpoint": {"uri": checkpoints.uri(), "step": last_saved}
                                if checkpoints
                                else None,
                            },
                        )
                    if run.global_step % settings.checkpoint_interval_steps == 0:
                        save_checkpoint()
                    if run.global_step >= total_steps:
                        break
                flush()
                run.train_seconds += time.perf_counter() - epoch_started
                run.samples_seen += samples_this_attempt
                samples_this_attempt = 0
                epoch_metrics = evaluate_model(
                    bare_model, test_features, test_labels, device=device, bf16=self.bf16
                )
                run.history.append(
                    {
                        "epoch": epoch + 1,
                        "step": run.global_step,
                        "val_loss": round(epoch_metrics["loss"], 5),
                        "val_accuracy": round(epoch_metrics["accuracy"], 5),
                        "train_loss": round(last_train_loss, 5),
                    }
                )
                tracker.log_metrics(
                    {
                        "val/loss": epoch_metrics["loss"],
                        "val/accuracy": epoch_metrics["accuracy"],
                        "epoch": epoch + 1,
                    },
                    step=run.global_step,
                )
            save_checkpoint()

        final = evaluate_model(bare_model, test_features, test_labels, device=device, bf16=self.bf16)
        throughput = run.samples_seen / run.train_seconds if run.train_seconds > 0 else 0.0
        metrics = {
            "accuracy": final["accuracy"],
            "loss": final["loss"],
            "train_loss": last_train_loss if not math.isnan(last_train_loss) else None,
            "train_samples_per_second": round(throughput, 1),
            "train_seconds": round(run.train_seconds, 3),
        }
        return {
            "metrics": {k: v for k, v in metrics.items() if v is not None},  # no train_loss if no step ran
            "steps": run.global_step,
            "totalSteps": total_steps,
            "epochs": math.ceil(run.global_step / steps_per_epoch),
            "worldSize": ctx.world_size,
            "device": str(device),
            "precision": "bf16" if self.bf16 else "fp32",
            "dataset": {"uri": settings.dataset_uri, "fingerprint": self._lineage_fingerprint(train_split)},
            "history": run.history[-10:],
        }

    def _publish(
        self,
        model: nn.Module,
        test_split: SplitData,
        run: RunState,
        metrics: dict[str, float],
        tracker: Tracker,
    ) -> dict[str, Any]:
        """Export to ONNX, check parity, upload state dict + ONNX + metadata (metadata last)."""
        settings = self.settings
        output = open_store(settings.output_uri)
        sample_shape = self.architecture.input_shape
        cpu_model = model.to("cpu", torch.float32).eval()
        onnx_bytes = export_onnx(cpu_model, sample_shape)
        parity = check_parity(cpu_model, onnx_bytes, test_split.features, tolerance=settings.onnx_tolerance)
        buffer = io.BytesIO()
        torch.save(cpu_model.state_dict(), buffer)
        state_bytes = buffer.getvalue()
        metadata = {
            "schema": METADATA_SCHEMA,
            "model": settings.model,
            "numClasses": test_split.schema.num_classes,
            "input": {"name": INPUT_NAME, "dtype": "float32", "shape": [-1, *sample_shape]},
            "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": [-1, test_split.schema.num_classes]},
            "preprocessing": {"scale": 1.0 / test_split.schema.feature_max_value},
            "onnx": {"key": ONNX_KEY, "opset": OPSET, "sha256": sha256_hex(onnx_bytes),
                     "sizeBytes": len(onnx_bytes), "parity": parity.to_json()},
            "stateDict": {"key": MODEL_KEY, "sha256": sha256_hex(state_bytes), "sizeBytes": len(state_bytes)},
            "metrics": metrics,
            "steps": run.global_step,
            "dataset": {"uri": settings.dataset_uri, "fingerprint": self._lineage_fingerprint(test_split)},
            "hyperparameters": self.params.to_json(),
            "runName": settings.run_name,
            "wandbRunId": run.wandb_run_id,
            "versions": {"torch": torch.__version__, "mlopsTrainer": __version__,
                         "python": platform.python_version()},
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }  # fmt: skip
        example = test_split.features[:1].astype(np.float32).tolist()
        metadata["inputExample"] = {"key": INPUT_EXAMPLE_KEY, "servingKey": SERVING_INPUT_EXAMPLE_KEY}
        metadata_bytes = json.dumps(metadata, indent=2, sort_keys=True).encode()
        output.write_atomic(MODEL_KEY, state_bytes)
        output.write_atomic(ONNX_KEY, onnx_bytes)
        output.write_atomic(INPUT_EXAMPLE_KEY, json.dumps(example).encode())
        output.write_atomic(SERVING_INPUT_EXAMPLE_KEY, json.dumps({"inputs": example}).encode())
        output.write_atomic(METADATA_KEY, metadata_bytes)

        with tempfile.TemporaryDirectory(dir=_scratch(settings.work_dir)) as folder:
            files = []
            for key, data in (
                (MODEL_KEY, state_bytes),
                (ONNX_KEY, onnx_bytes),
                (METADATA_KEY, metadata_bytes),
            ):
                path = Path(folder) / key
                path.write_bytes(data)
                files.append(path)
            tracker.log_model(_artifact_name(settings.run_name), files, {"uri": output.uri(), **metrics})
            tracker.set_summary({f"final/{k}": v for k, v in metrics.items()})
        return {
            "artifacts": {
                "model": output.uri(MODEL_KEY),
                "onnx": output.uri(ONNX_KEY),
                "metadata": output.uri(METADATA_KEY),
            },
            "onnxParity": {"maxAbsDiff": parity.max_abs_diff, "tolerance": parity.tolerance},
        }


def _scratch(work_dir: str) -> str:
    os.makedirs(work_dir, exist_ok=True)
    return work_dir


def _artifact_name(run_name: str) -> str:
    # W&B artifact names allow letters, digits, '-', '_' and '.'.
    return "model-" + "".join(c if c.isalnum() or c in "-_." else "-" for c in run_name)


def train(settings: TrainSettings) -> dict[str, Any]:
    ctx = init_distributed(settings.device)
    try:
        result = Trainer(settings, ctx).run()
        result["rank"] = ctx.rank
        return result
    finally:
        shutdown_distributed()
