"""Hyperparameter parsing, DataLoader worker defaults, and the resumable per-epoch batch order."""

from __future__ import annotations

import os

import pytest
from mlops_trainer.config import Hyperparameters
from mlops_trainer.errors import ConfigError
from mlops_trainer.train import EpochBatchSampler


def test_hyperparameters_accept_camel_case_snake_case_and_aliases() -> None:
    params = Hyperparameters.from_json(
        '{"epochs": 3, "batchSize": 16, "lr": 0.01, "grad_clip_norm": 1, "maxSteps": null}'
    )
    assert (params.epochs, params.batch_size, params.learning_rate) == (3, 16, 0.01)
    assert params.grad_clip_norm == 1.0
    assert params.max_steps is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"epochs": 1.5}', "epochs must be an integer"),
        ('{"optimizer": "adam"}', "optimizer must be one of"),
        ('{"deterministic": 1}', "deterministic must be true or false"),
        ('{"epoch": 3}', "unknown hyperparameter 'epoch'"),
        ('{"batchSize": 0}', "batch_size must be at least 1"),
        ("[1, 2]", "must be a JSON object"),
        ("{", "not valid JSON"),
    ],
)
def test_bad_hyperparameters_are_config_errors_that_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Hyperparameters.from_json(text)


def test_workers_default_to_none_on_small_machines_and_scale_with_spare_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    assert Hyperparameters().resolved_workers() == 0
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert Hyperparameters().resolved_workers() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four GPUs share the node's cores
    assert Hyperparameters().resolved_workers() == 2
    assert Hyperparameters(num_workers=1).resolved_workers() == 1


def test_resumed_epoch_sees_exactly_the_batches_the_uninterrupted_epoch_had_left() -> None:
    sampler = EpochBatchSampler(100, 8, rank=0, world_size=1, seed=7)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, skip_batches=5)
    assert list(sampler) == full[5:]
    assert len(sampler) == len(full) - 5
    sampler.set_epoch(4)
    assert list(sampler) != full  # a new order each epoch


def test_ranks_get_equal_disjoint_shares_covering_the_data() -> None:
    shares = []
    for rank in range(3):
        sampler = EpochBatchSampler(100, 8, rank=rank, world_size=3, seed=1)
        sampler.set_epoch(0)
        shares.append([i for batch in sampler for i in batch])
    assert {len(s) for s in shares} == {34}  # 100 padded to 102, 34 each
    assert set().union(*shares) == set(range(100))
