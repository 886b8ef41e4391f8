"""The registry of architectures that TrainingRun.spec.model names.

Add a real architecture by decorating its factory with `@register(...)`; the trainer needs nothing
else: input shape and class count are checked against the data set's schema before training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .errors import ConfigError

ModelFactory = Callable[[int], nn.Module]


@dataclass(frozen=True)
class Architecture:
    name: str
    input_shape: tuple[int, ...]  # one sample, without the batch axis
    factory: ModelFactory  # num_classes -> module
    description: str

    def build(self, num_classes: int) -> nn.Module:
        return self.factory(num_classes)


_REGISTRY: dict[str, Architecture] = {}


def register(
    name: str, *, input_shape: tuple[int, ...], description: str
) -> Callable[[ModelFactory], ModelFactory]:
    def decorate(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = Architecture(name, input_shape, factory, description)
        return factory

    return decorate


def architecture_names() -> list[str]:
    return sorted(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(architecture_names())}") from None


class DigitsCNN(nn.Module):
    """Two 3x3 conv blocks and a small classifier head, for 1x8x8 digit images (~150k parameters)."""

    def __init__(self, num_classes: int, width: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, width, kernel_size=3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, kernel_size=3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(2 * width * 4 * 4, 128),
            nn.ReLU(inplace=True),
            nn.Linear(128, num_classes),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(images))  # type: ignore[no-any-return]


class DigitsMLP(nn.Module):
    """A two-layer perceptron baseline for the same data."""

    def __init__(self, num_classes: int, hidden: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes)
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images)  # type: ignore[no-any-return]


@register("digits-cnn", input_shape=(1, 8, 8), description="small CNN for 8x8 digit images")
def _digits_cnn(num_classes: int) -> nn.Module:
    return DigitsCNN(num_classes)


@register("digits-mlp", input_shape=(1, 8, 8), description="MLP baseline for 8x8 digit images")
def _digits_mlp(num_classes: int) -> nn.Module:
    return DigitsMLP(num_classes)
