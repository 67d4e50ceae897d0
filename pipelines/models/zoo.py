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
        self.points = {name: str(index) for name, index in (points or {}).items()}  # a slice (model[:3]) has none


def mix_points(model: nn.Module) -> dict[str, nn.Module]:
    """The model's mix points, name -> the module whose output is mixed (empty if it has none).

    A model declares them as ``points``: name -> submodule path. Looks through a
    ``DistributedDataParallel`` wrapper, so it works on a prepared model.
    """
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    return {name: inner.get_submodule(path) for name, path in getattr(inner, "points", {}).items()}


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


def _conv_length(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


@MODELS.register("cnn1d")
def cnn1d(input_shape: Sequence[int], num_classes: int, width: int = 32) -> nn.Module:
    """The 1-D CNN of the MNIST-1D paper (Greydanus & Kobak, 2020): three strided convolutions
    (kernel 5, then 3 and 3; stride 2) and a linear read-out, for ``(C, L)`` inputs."""
    if len(input_shape) != 2:
        raise ValueError(f"cnn1d takes (C, L) inputs, got shape {tuple(input_shape)}")
    channels, length = input_shape
    for kernel in (5, 3, 3):
        length = _conv_length(length, kernel, 2, 1)
    if length < 1:
        raise ValueError(f"cnn1d needs signals of at least 12 points, got shape {tuple(input_shape)}")
    return PointedSequential(
        nn.Conv1d(channels, width, 5, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(width * length, num_classes),
        points={"conv1": 1, "conv2": 3, "conv3": 5},
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, channels_in: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-18 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) in its
    CIFAR form: a 3x3 stride-1 stem without max-pooling, four stages of two basic blocks
    (64-128-256-512 channels), global average pooling, one linear layer.

    Batch norm keeps per-rank statistics under DDP (rank 0's buffers are broadcast each step).
    """

    def __init__(self, channels: int, num_classes: int, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        stages, channels_in = [], width
        for index, stride in enumerate((1, 2, 2, 2)):
            out = width * 2**index
            stages.append(nn.Sequential(BasicBlock(channels_in, out, stride), BasicBlock(out, out, 1)))
            channels_in = out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels_in, num_classes)
        self.points = {"stem": "stem", "layer1": "layer1", "layer2": "layer2", "layer3": "layer3"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
        return self.fc(self.pool(x))


@MODELS.register("resnet18_cifar")
def resnet18_cifar(input_shape: Sequence[int], num_classes: int, width: int = 64) -> nn.Module:
    """ResNet-18 for small images, ``(C, H, W)`` inputs (CIFAR: 3 x 32 x 32)."""
    if len(input_shape) != 3:
        raise ValueError(f"resnet18_cifar takes (C, H, W) inputs, got shape {tuple(input_shape)}")
    return ResNetCifar(input_shape[0], num_classes, width)


def module_order_depths(names: Sequence[str]) -> dict[str, int]:
    """Depth 1, 2, ... of each parameter by the order its module first appears (a sequential
    model's layers): a layer's weight and bias share one depth."""
    order: dict[str, int] = {}
    for name in names:
        order.setdefault(name.rpartition(".")[0], len(order) + 1)
    return {name: order[name.rpartition(".")[0]] for name in names}


def residual_block_depths(names: Sequence[str]) -> dict[str, int]:
    """Depth of each ResNet parameter by block: the stem 1, each residual block (its convolutions,
    batch norms and shortcut together) the next, the classifier last."""
    def block(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0].startswith("layer") else parts[0]

    order: dict[str, int] = {}
    for name in names:
        order.setdefault(block(name), len(order) + 1)
    return {name: order[block(name)] for name in names}


# every registered model's layer depths (LiNeS scales a merged task vector by depth)
DEPTH_MAPS: dict[str, Callable[[Sequence[str]], dict[str, int]]] = {
    "mlp": module_order_depths,
    "cnn": module_order_depths,
    "cnn1d": module_order_depths,
    "resnet18_cifar": residual_block_depths,
}


def layer_depths(model: str, names: Sequence[str]) -> dict[str, int]:
    """Depth (1 = the input side) of each parameter ``names`` of the registered ``model``."""
    MODELS.get(model, key="train.model")
    return DEPTH_MAPS[model](list(names))


@torch.no_grad()
def init_parameters(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Re-initialise every linear and conv layer from ``generator`` with PyTorch's default scheme
    (Kaiming-uniform weights with a = sqrt(5), bias uniform in ±1/sqrt(fan_in)), in module order,
    so a seed fixes the initial weights without touching the global RNG. Batch norm starts at
    scale 1, shift 0."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                fan_in, _ = nn.init._calculate_fan_in_and_fan_out(module.weight)
                bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0.0
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif any(True for _ in module.parameters(recurse=False)):
            raise TypeError(f"init_parameters does not know how to initialise {type(module).__name__}")
    return model


def build_model(name: str, input_shape: Sequence[int], num_classes: int, seed: int) -> nn.Module:
    """Build the registered model ``name`` with weights fixed by ``seed``."""
    builder = MODELS.get(name, key="train.model")
    model = builder(tuple(int(d) for d in input_shape), int(num_classes))
    return init_parameters(model, torch_generator(seed))
