"""Configuration of the `train` command: hyperparameters (JSON) and settings (flags or env).

Every setting has a command-line flag and an environment variable; the flag wins. The operator sets
the environment (see README.md, "Environment contract"); people running the CLI by hand use flags.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from mlops_contract import envvars

from .errors import ConfigError

OptimizerName = Literal["adamw", "sgd"]
SchedulerName = Literal["cosine", "constant"]
PrecisionName = Literal["auto", "fp32", "bf16"]

# Short names people write in TrainingRun.spec.hyperparameters.
_ALIASES = {"lr": "learning_rate"}


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


@dataclass(frozen=True)
class Hyperparameters:
    """Training hyperparameters; keys are accepted in camelCase or snake_case (`lr` too)."""

    epochs: int = 10
    batch_size: int = 64  # per process; the global batch is batch_size x world size
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: OptimizerName = "adamw"
    momentum: float = 0.9  # sgd only
    scheduler: SchedulerName = "cosine"
    warmup_steps: int = 0
    label_smoothing: float = 0.0
    grad_clip_norm: float | None = None
    seed: int = 42
    num_workers: int | None = None  # DataLoader workers per process; None: auto (see resolved_workers)
    log_every_steps: int = 10  # metrics are buffered on the device and flushed this often
    precision: PrecisionName = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    deterministic: bool = True
    max_steps: int | None = None  # stop early after this many optimizer steps (all epochs together)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Hyperparameters:
        hints = get_type_hints(cls)
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {}
        for given_name, value in raw.items():
            name = _ALIASES.get(given_name, _snake_case(given_name))
            if name not in known:
                raise ConfigError(f"unknown hyperparameter {given_name!r}; known: {', '.join(sorted(known))}")
            values[name] = _coerce(name, hints[name], value)
        params = cls(**values)
        params.check()
        return params

    @classmethod
    def from_json(cls, text: str | None) -> Hyperparameters:
        if not text or not text.strip():
            return cls()
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"hyperparameters are not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError("hyperparameters must be a JSON object")
        return cls.from_mapping(raw)

    def check(self) -> None:
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "log_every_steps": self.log_every_steps,
        }
        for name, value in positive.items():
            if value < 1:
                raise ConfigError(f"hyperparameter {name} must be at least 1, got {value}")
        if self.learning_rate <= 0:
            raise ConfigError(f"hyperparameter learning_rate must be positive, got {self.learning_rate}")
        if (self.num_workers or 0) < 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("num_workers, warmup_steps and weight_decay must not be negative")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must lie in [0, 1), got {self.label_smoothing}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ConfigError(f"max_steps must be at least 1, got {self.max_steps}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def resolved_workers(self) -> int:
        """Workers only where spare cores exist: on a small box they steal the cores the step needs
        (measured on 2 cores: 0.75x the throughput with 1-2 workers for the in-memory digits data)."""
        if self.num_workers is not None:
            return self.num_workers
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return 0 if per_process < 4 else min(4, per_process // 2)


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    """Check a JSON value against the field's resolved type hint (Literal, bool, int, float, optional)."""
    allowed = (
        [a for a in get_args(annotation) if a is not type(None)]
        if get_origin(annotation)
        in (
            Union,
            UnionType,
        )
        else [annotation]
    )
    if value is None:
        if type(None) in get_args(annotation):
            return None
        raise ConfigError(f"hyperparameter {name} must not be null")
    expected = allowed[0]
    if get_origin(expected) is Literal:
        if value not in get_args(expected):
            raise ConfigError(
                f"hyperparameter {name} must be one of {list(get_args(expected))}, got {value!r}"
            )
        return value
    if expected is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"hyperparameter {name} must be true or false, got {value!r}")
        return value
    # JSON has one number type: accept 3.0 for an int, and 3 for a float; never a bool.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"hyperparameter {name} must be a number, got {value!r}")
    if expected is int:
        if int(value) != value:
            raise ConfigError(f"hyperparameter {name} must be an integer, got {value!r}")
        return int(value)
    return float(value)


def env_str(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    value = env_str(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be an integer, got {value!r}") from exc


def env_float(name: str, default: float) -> float:
    value = env_str(name)
    if value is None:
        return default
    try:
        return float(value)
    except ValueError as exc:
        raise ConfigError(f"{name} must be a number, got {value!r}") from exc


@dataclass(frozen=True)
class TrackingSettings:
    """W&B settings come from wandb's own variables; the API key is read by wandb itself, never by us."""

    project: str | None = None
    entity: str | None = None
    mode: str = "offline"
    run_id: str | None = None

    @property
    def enabled(self) -> bool:
        return self.project is not None and self.mode != "disabled"

    @classmethod
    def from_env(cls) -> TrackingSettings:
        mode = env_str(envvars.WANDB_MODE, "online") or "online"
        if mode not in {"online", "offline", "disabled"}:
            raise ConfigError(f"{envvars.WANDB_MODE} must be online, offline or disabled, got {mode!r}")
        if mode == "online" and env_str(envvars.WANDB_PROJECT) and not env_str(envvars.WANDB_API_KEY):
            raise ConfigError(
                f"{envvars.WANDB_MODE} is online but {envvars.WANDB_API_KEY} is not set (mount the Secret)"
            )
        return cls(
            project=env_str(envvars.WANDB_PROJECT),
            entity=env_str(envvars.WANDB_ENTITY),
            mode=mode,
            run_id=env_str(envvars.WANDB_RUN_ID),
        )


@dataclass(frozen=True)
class TrainSettings:
    model: str
    dataset_uri: str
    output_uri: str
    hyperparameters: Hyperparameters = field(default_factory=Hyperparameters)
    checkpoint_uri: str | None = None
    checkpoint_interval_steps: int = 500
    keep_checkpoints: int = 3
    run_name: str = "run"
    device: str = "auto"
    onnx_tolerance: float = 1e-4
    dataset_fingerprint: str | None = None
    work_dir: str = "/tmp/mlops-trainer"  # noqa: S108 - scratch space inside the container
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    def check(self) -> None:
        if not self.model:
            raise ConfigError(f"no model: set {envvars.MODEL} or --model")
        if not self.dataset_uri:
            raise ConfigError(f"no data set: set {envvars.DATASET_URI} or --dataset-uri")
        if not self.output_uri:
            raise ConfigError(f"no output: set {envvars.OUTPUT_URI} or --output-uri")
        if self.checkpoint_interval_steps < 1 or self.keep_checkpoints < 1:
            raise ConfigError("checkpoint interval and kept checkpoints must be at least 1")
        if self.device not in {"auto", "cpu", "cuda"}:
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")

    def to_json(self) -> dict[str, Any]:
        """Settings as recorded in metadata and W&B config (nothing secret lives here)."""
        data = asdict(self)
        data["tracking"] = {
            "project": self.tracking.project,
            "entity": self.tracking.entity,
            "mode": self.tracking.mode,
        }
        return data
