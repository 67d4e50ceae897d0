"""The model registry: ``train.model`` in params.yaml picks a builder from :data:`MODELS`."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from pipelines.registry import Registry
from pipelines.seeding import torch_generator

ModelBuilder = Callable[[tuple[int, ...], int], nn.Module]
MODELS: Registry[ModelBuilder] = Registry("model")


class PointedSequential(nn.Sequential):
    """``nn.Sequential`` with named mix points: the outputs of some children, where manifold
    mixup may mix hidden features. The state dict is exactly ``nn.Sequential``'s."""

    def __init__(self, *layers: nn.Module, points: dict[str, int] | None = None) -> None:
        super().__init__(*layers)
        self.points = dict(points or {})  # a slice (model[:3]) has none


def mix_points(model: nn.Module) -> dict[str, nn.Module]:
    """The model's mix points, name -> the module whose output is mixed (empty if it has none).

    Looks through a ``DistributedDataParallel`` wrapper, so it works on a prepared model.
    """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    points = getattr(inner, "points", {})
    return {name: inner[index] for name, index in points.items()}


@MODELS.register("mlp")
def mlp(input_shape: Sequence[int], num_classes: int, hidden: int = 256) -> nn.Module:
    """Two hidden ReLU layers over the flattened input."""
    features = math.prod(input_shape)
    return PointedSequential(
        nn.Flatten(),
        nn.Linear(features, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
        points={"hidden1": 2, "hidden2": 4},
    )


@MODELS.register("cnn")
def cnn(input_shape: Sequence[int], num_classes: int, width: int = 32) -> nn.Module:
    """A small 2-D CNN: two conv blocks, pooled to 4x4, then two linear layers.

    No batch norm: per-rank statistics would make DDP differ from single-process training.
    """
    if len(input_shape) != 3:
        raise ValueError(f"cnn takes (C, H, W) inputs, got shape {tuple(input_shape)}")
    channels = input_shape[0]
    return PointedSequential(
        nn.Conv2d(channels, width, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(2 * width * 16, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
        points={"conv1": 1, "pool": 4, "conv3": 6, "fc": 10},
    )


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every linear and conv layer from ``generator`` with PyTorch's default scheme
    (Kaiming-uniform weights with a = sqrt(5), bias uniform in ±1/sqrt(fan_in)), in module order,
    so a seed fixes the initial weights without touching the global RNG."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"init_parameters does not know how to initialise {type(module).__name__}")
    return model


def build_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Module:
    """Build the registered model ``name`` with weights fixed by ``seed``."""
    builder = MODELS.get(name, key="train.model")
    model = builder(tuple(int(d) for d in input_shape), int(num_classes))
    return init_parameters(model, torch_generator(seed))
