"""PLeaS (Nasery et al., "PLeaS: Merging Models with Permutations and Least Squares", 2024,
https://arxiv.org/abs/2407.02447) for the zoo's sequential chains (``mlp``, ``cnn``, ``cnn1d``).

1. Permutations from activation matching: each model's hidden units are matched to the first
   model's by the correlation of their activations on unlabelled inputs, one linear assignment
   per layer (the LAP of :mod:`pipelines.merging.alignment`, its permutation spec and
   :func:`~pipelines.merging.alignment.permute_state`).
2. Least squares, layer by layer from the input: the merged layer's weights and bias are the ones
   whose outputs on the merged model's own features come closest (in squared error) to the
   permuted models' outputs of that layer on theirs, averaged over the models. Convolutions are
   fitted as linear maps of their input patches.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from pipelines.errors import ConfigError
from pipelines.merging.alignment import PermutationSpec, permute_state, sequential_spec
from pipelines.merging.parameters import Count, Merged, Seed
from pipelines.merging.state import StateDict, check_compatible
from pipelines.seeding import derive_seed, torch_generator

_WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d)


def _chain(model: nn.Module, state: StateDict) -> nn.Sequential:
    if not isinstance(model, nn.Sequential):
        raise ConfigError("merge: pleas merges sequential models (mlp, cnn, cnn1d)")
    chain = copy.deepcopy(model).cpu()  # float64 least squares on the CPU, wherever the module was
    chain.load_state_dict(state)
    return chain.double().eval()


@torch.no_grad()
def _outputs(chain: nn.Sequential, inputs: torch.Tensor) -> list[torch.Tensor]:
    """The output of every child of ``chain`` on ``inputs`` (float64)."""
    outputs, x = [], inputs.double()
    for module in chain:
        x = module(x)
        outputs.append(x)
    return outputs


def _units(activations: torch.Tensor) -> torch.Tensor:
    """``[samples, units]``: channels are units and positions more samples."""
    if activations.dim() == 2:
        return activations
    return activations.movedim(1, -1).reshape(-1, activations.shape[1])


def _matched_activations(spec: PermutationSpec, chain: nn.Sequential, outputs: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """For each group ``P<i>`` (the outputs of layer ``i``), its units' activations after the
    layer's nonlinearity (the next child's output when that is an activation)."""
    found = {}
    for group in spec.sizes:
        index = int(group[1:])
        after = index + 1 if index + 1 < len(chain) and not isinstance(chain[index + 1], _WEIGHTED + (nn.Flatten,)) else index
        found[group] = _units(outputs[after])
    return found


def activation_matching(spec: PermutationSpec, reference: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per group, the permutation of ``other``'s units that maximises the summed correlation of
    their activations with ``reference``'s (``perms[g][i]``: the unit of ``other`` that becomes
    unit ``i``, as :func:`~pipelines.merging.alignment.permute_state` takes it). Activations do
    not depend on the other layers' permutations, so each group is one assignment."""
    perms = {}
    for group in spec.sizes:
        a, b = (_standardised(x[group]) for x in (reference, other))
        cost = (a.T @ b) / a.shape[0]
        rows, columns = linear_sum_assignment(cost.numpy(), maximize=True)
        perms[group] = torch.as_tensor(columns[np.argsort(rows)], dtype=torch.long)
    return perms


def _standardised(activations: torch.Tensor) -> torch.Tensor:
    centred = activations - activations.mean(0)
    spread = centred.std(0)
    return centred / torch.where(spread > 0, spread, torch.ones_like(spread))


def _design(module: nn.Module, features: torch.Tensor) -> torch.Tensor:
    """The layer's input as rows of a linear map (patches for convolutions), with a ones column
    when the layer has a bias."""
    if isinstance(module, nn.Linear):
        rows = features
    else:
        if module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros":
            raise ConfigError("merge: pleas fits convolutions with groups 1 and numeric zero padding")
        if isinstance(module, nn.Conv2d):
            images, kernel, stride, padding, dilation = (features, module.kernel_size, module.stride, module.padding,
                                                         module.dilation)
        else:  # a 1-D convolution is a 2-D one over maps of height 1
            images = features.unsqueeze(2)
            kernel, stride = (1, module.kernel_size[0]), (1, module.stride[0])
            padding, dilation = (0, module.padding[0]), (1, module.dilation[0])
        patches = F.unfold(images, kernel, dilation=dilation, padding=padding, stride=stride)  # [N, C k, L]
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    if module.bias is None:
        return rows
    return torch.cat([rows, torch.ones(rows.shape[0], 1, dtype=rows.dtype)], 1)


def _targets(output: torch.Tensor) -> torch.Tensor:
    """A layer's outputs as rows matching :func:`_design`'s (positions of a map are rows)."""
    if output.dim() == 2:
        return output
    return output.flatten(2).transpose(1, 2).reshape(-1, output.shape[1])


@torch.no_grad()
def pleas(
    states: Sequence[StateDict], unlabelled_inputs: torch.Tensor, model: nn.Module,
    samples: Count = 2048, seed: Seed = 0,
) -> Merged:
    """PLeaS: align every model to the first by activation matching, then fit each layer of the
    merged model by least squares to the aligned models' mean output of that layer, on up to
    ``samples`` unlabelled inputs (drawn with a generator seeded by ``seed``)."""
    if len(states) < 2:
        raise ConfigError(f"merge: pleas merges at least 2 models, got {len(states)}")
    if samples < 1 or len(unlabelled_inputs) == 0:
        raise ConfigError(f"merge: pleas needs unlabelled inputs and samples >= 1, got {len(unlabelled_inputs)} and {samples}")
    check_compatible(states)
    spec = sequential_spec(states[0])
    generator = torch_generator(derive_seed(seed, "pleas"))
    rows = torch.randperm(len(unlabelled_inputs), generator=generator)[:samples]
    inputs = torch.as_tensor(unlabelled_inputs)[rows].double()
    chains = [_chain(model, s) for s in states]
    outputs = [_outputs(c, inputs) for c in chains]
    reference = _matched_activations(spec, chains[0], outputs[0])
    aligned = [states[0]] + [
        permute_state(spec, s, activation_matching(spec, reference, _matched_activations(spec, c, o)))
        for s, c, o in zip(states[1:], chains[1:], outputs[1:], strict=True)
    ]
    aligned_outputs = [_outputs(_chain(model, s), inputs) for s in aligned]
    merged = _chain(model, states[0])
    features = inputs
    for index, module in enumerate(merged):
        if isinstance(module, _WEIGHTED):
            design = _design(module, features)
            target = torch.stack([_targets(o[index]) for o in aligned_outputs]).mean(0)
            solution = torch.linalg.lstsq(design, target, driver="gelsd").solution  # [in (+ 1), out]
            if module.bias is not None:
                module.bias.copy_(solution[-1])
                solution = solution[:-1]
            module.weight.copy_(solution.T.reshape(module.weight.shape))
        features = module(features)
    dtype = {n: t.dtype for n, t in states[0].items()}
    return {n: t.detach().to(dtype[n]).clone() for n, t in merged.state_dict().items()}, list(range(len(states)))
