"""Experiment tracking: a W&B run (online or offline) on rank 0, or nothing.

wandb reads WANDB_API_KEY from the environment (a mounted Secret) by itself; this module never reads,
passes or logs it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from .config import TrackingSettings

log = logging.getLogger(__name__)


class Tracker(Protocol):
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_model(self, name: str, files: Sequence[Path], metadata: Mapping[str, Any]) -> None: ...
    def set_summary(self, metrics: Mapping[str, float]) -> None: ...
    def finish(self, exit_code: int = 0) -> None: ...
    def describe(self) -> dict[str, Any] | None: ...


class NullTracker:
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        pass

    def log_model(self, name: str, files: Sequence[Path], metadata: Mapping[str, Any]) -> None:
        pass

    def set_summary(self, metrics: Mapping[str, float]) -> None:
        pass

    def finish(self, exit_code: int = 0) -> None:
        pass

    def describe(self) -> dict[str, Any] | None:
        return None


class WandbTracker:
    def __init__(
        self,
        settings: TrackingSettings,
        *,
        run_name: str,
        run_id: str | None,
        config: Mapping[str, Any],
        directory: Path,
    ) -> None:
        import wandb  # noqa: PLC0415 - heavy, and absent from the operator's environment

        directory.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self.run = wandb.init(
            project=settings.project,
            entity=settings.entity,
            mode=settings.mode,  # type: ignore[arg-type]
            name=run_name,
            id=run_id,
            resume="allow" if run_id else None,
            config=dict(config),
            dir=str(directory),
            # The console mirror and system sampler cost throughput and can copy env-derived text.
            settings=wandb.Settings(console="off", x_disable_stats=True, silent=True),
        )
        self.mode = settings.mode

    @property
    def run_id(self) -> str:
        return str(self.run.id)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_model(self, name: str, files: Sequence[Path], metadata: Mapping[str, Any]) -> None:
        artifact = self._wandb.Artifact(name=name, type="model", metadata=dict(metadata))
        for path in files:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def set_summary(self, metrics: Mapping[str, float]) -> None:
        for key, value in metrics.items():
            self.run.summary[key] = value

    def finish(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)

    def describe(self) -> dict[str, Any]:
        url = None if self.mode == "offline" else self.run.url
        return {
            "runId": self.run_id,
            "path": "/".join(str(p) for p in (self.run.entity, self.run.project, self.run.id) if p),
            "url": url,
            "mode": self.mode,
            "dir": str(Path(self.run.dir).parent),
        }


def create_tracker(
    settings: TrackingSettings,
    *,
    enabled: bool,
    run_name: str,
    run_id: str | None,
    config: Mapping[str, Any],
    directory: Path,
) -> Tracker:
    if not enabled or not settings.enabled:
        return NullTracker()
    return WandbTracker(settings, run_name=run_name, run_id=run_id, config=config, directory=directory)
