"""Permutation alignment of independently trained networks: weight matching from Git Re-Basin
(Ainsworth, Hayase & Srinivasa, "Git Re-Basin: Merging Models modulo Permutation Symmetries",
ICLR 2023, https://arxiv.org/abs/2209.04836).

Hidden units of a layer can be permuted, with the next layer's inputs permuted alike, without
changing the network's function. Weight matching finds, for a model B, the permutations that
make its weights closest to a reference A (maximising ``sum_l <W_A_l, P_l W_B_l P_{l-1}^T>``) by
coordinate descent: one linear assignment problem per hidden layer at a time, in a seeded random
order, until a full pass changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from pipelines.errors import ConfigError
from pipelines.merging.state import StateDict

# per parameter: (axis, group, block) — indices of ``axis`` are ``unit * block + offset``; a block
# above 1 is a linear layer reading a flattened (channels x positions) feature map
Axes = tuple[tuple[int, str, int], ...]


@dataclass(frozen=True)
class PermutationSpec:
    """Which axes of which tensors each permutation group acts on, and each group's size."""

    sizes: dict[str, int]
    axes: dict[str, Axes]

    def members(self, group: str) -> list[tuple[str, int, int]]:
        """``(parameter, axis, block)`` of every tensor axis ``group`` permutes, in name order."""
        return [(name, axis, block) for name in sorted(self.axes) for axis, g, block in self.axes[name] if g == group]


_LAYER = re.compile(r"^(\d+)\.(\w+)$")


def sequential_spec(state: StateDict) -> PermutationSpec:
    """The permutation spec of a feed-forward chain (``nn.Sequential``: the ``mlp``, ``cnn`` and
    ``cnn1d`` of the model zoo) read off its state dict alone.

    Every layer with a weight of two or more dimensions (linear, convolution) gets a group on its
    output units, except the last (its outputs are the classes); a following batch norm is
    permuted by that group; the next weighted layer's input axis too, in blocks when a flatten
    made its inputs ``channels x positions``.

    Raises:
        ConfigError: the names are not those of a plain chain (e.g. residual blocks), or a
            layer's inputs do not fit the previous layer's outputs.
    """
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for name, tensor in state.items():
        match = _LAYER.match(name)
        if match is None:
            raise ConfigError(
                f"merge: weight_matching aligns sequential models (mlp, cnn, cnn1d); {name!r} is not a layer of a chain"
            )
        layers.setdefault(int(match.group(1)), {})[match.group(2)] = tensor
    weighted = [i for i in sorted(layers) if "weight" in layers[i] and layers[i]["weight"].dim() >= 2]
    sizes: dict[str, int] = {}
    axes: dict[str, list[tuple[int, str, int]]] = {}
    current: str | None = None
    for index in sorted(layers):
        params = layers[index]
        weight = params.get("weight")
        if weight is not None and weight.dim() >= 2:
            if current is not None:
                channels = sizes[current]
                if weight.shape[1] % channels:
                    raise ConfigError(f"merge: layer {index} takes {weight.shape[1]} inputs, not a multiple of {channels} units")
                axes.setdefault(f"{index}.weight", []).append((1, current, weight.shape[1] // channels))
            current = None
            if index != weighted[-1]:  # the last weighted layer's outputs are the model's
                current = f"P{index}"
                sizes[current] = weight.shape[0]
                axes.setdefault(f"{index}.weight", []).append((0, current, 1))
                if "bias" in params:
                    axes[f"{index}.bias"] = [(0, current, 1)]
        elif current is not None:  # per-channel layers (batch norm): every per-unit tensor follows
            for key, tensor in params.items():
                if tensor.dim() == 1 and tensor.shape[0] == sizes[current]:
                    axes[f"{index}.{key}"] = [(0, current, 1)]
    return PermutationSpec(sizes, {name: tuple(entries) for name, entries in axes.items()})


def _take(tensor: torch.Tensor, axis: int, permutation: torch.Tensor, block: int) -> torch.Tensor:
    index = (permutation[:, None] * block + torch.arange(block)).reshape(-1)
    return tensor.index_select(axis, index)


def permute_state(spec: PermutationSpec, state: StateDict, perms: dict[str, torch.Tensor], skip: str | None = None) -> StateDict:
    """``state`` with every group's permutation applied (``perms[g][i]`` = the unit of ``state``
    that becomes unit ``i``); the group ``skip`` is left out (for building assignment costs)."""
    out = dict(state)
    for name, entries in spec.axes.items():
        tensor = state[name]
        for axis, group, block in entries:
            if group != skip:
                tensor = _take(tensor, axis, perms[group], block)
        out[name] = tensor
    return out


def _unit_rows(tensor: torch.Tensor, axis: int, units: int) -> torch.Tensor:
    return tensor.movedim(axis, 0).reshape(units, -1).double()


def weight_matching(
    spec: PermutationSpec, reference: StateDict, other: StateDict, seed: int = 0, max_passes: int = 100
) -> dict[str, torch.Tensor]:
    """Permutations that align ``other`` to ``reference`` (Git Re-Basin's weight matching).

    Returns:
        Group name -> permutation (a ``LongTensor``); ``permute_state(spec, other, perms)`` is the
        aligned model, with the same function as ``other``.
    """
    perms = {group: torch.arange(size) for group, size in spec.sizes.items()}
    generator = torch.Generator().manual_seed(seed)
    groups = sorted(spec.sizes)
    for _ in range(max_passes):
        improved = False
        for position in torch.randperm(len(groups), generator=generator).tolist():
            group = groups[position]
            size = spec.sizes[group]
            partial = permute_state(spec, other, perms, skip=group)
            cost = torch.zeros(size, size, dtype=torch.float64)
            for name, axis, _block in spec.members(group):
                cost += _unit_rows(reference[name], axis, size) @ _unit_rows(partial[name], axis, size).T
            rows, columns = linear_sum_assignment(cost.numpy(), maximize=True)
            candidate = torch.as_tensor(columns[np.argsort(rows)], dtype=torch.long)
            units = torch.arange(size)
            gain = cost[units, candidate].sum() - cost[units, perms[group]].sum()
            if gain > 1e-12 * max(1.0, cost.abs().max().item()):
                perms[group] = candidate
                improved = True
        if not improved:
            break
    return perms
