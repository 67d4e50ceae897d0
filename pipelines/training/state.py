"""Training state that loads without unpickling: tensors in safetensors, the rest in JSON.

A training checkpoint directory holds the model checkpoint (``model.safetensors`` + ``card.json``),
``optimizer.safetensors`` (every tensor of the optimizer state) and ``train_state.json`` (epoch,
history, the optimizer's non-tensor state and param groups).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipelines.models.checkpoints import ModelCard, load_card, load_state_dict, save_checkpoint

OPTIMIZER = "optimizer.safetensors"
TRAIN_STATE = "train_state.json"


def optimizer_state_to_tensors(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into a flat tensor mapping and a JSON-able rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for index, entry in state["state"].items():
        for key, value in entry.items():
            name = f"{index}.{key}"
            if isinstance(value, torch.Tensor):
                tensors[name] = value.detach().to("cpu").contiguous()
            else:
                scalars[name] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def optimizer_state_from_tensors(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`optimizer_state_to_tensors`."""
    entries: dict[int, dict[str, Any]] = {}
    for source in (tensors, rest["scalars"]):
        for name, value in source.items():
            index, key = name.split(".", 1)
            entries.setdefault(int(index), {})[key] = value
    return {"state": entries, "param_groups": rest["param_groups"]}


@dataclass(frozen=True)
class TrainState:
    """Where a run stands: the next epoch to run, and what the finished epochs reported."""

    epoch: int
    history: list[dict[str, Any]]
    attempt: int


def save_train_state(
    directory: str | Path,
    model_state: dict[str, torch.Tensor],
    card: ModelCard,
    optimizer: torch.optim.Optimizer,
    train_state: TrainState,
) -> None:
    directory = Path(directory)
    save_checkpoint(str(directory), model_state, card)
    tensors, rest = optimizer_state_to_tensors(optimizer.state_dict())
    save_file(tensors, str(directory / OPTIMIZER))
    payload = {
        "epoch": train_state.epoch,
        "history": train_state.history,
        "attempt": train_state.attempt,
        "optimizer": rest,
    }
    (directory / TRAIN_STATE).write_text(json.dumps(payload, indent=1, sort_keys=True))


@dataclass(frozen=True)
class SavedTraining:
    """A training checkpoint read back into memory."""

    weights: dict[str, torch.Tensor]
    card: ModelCard
    progress: TrainState
    optimizer_state: dict[str, Any]


def load_train_state(directory: str | Path) -> SavedTraining:
    """Read a training checkpoint written by :func:`save_train_state`."""
    directory = Path(directory)
    payload = json.loads((directory / TRAIN_STATE).read_text())
    optimizer_state = optimizer_state_from_tensors(load_file(str(directory / OPTIMIZER)), payload["optimizer"])
    progress = TrainState(epoch=int(payload["epoch"]), history=list(payload["history"]), attempt=int(payload["attempt"]))
    return SavedTraining(load_state_dict(str(directory)), load_card(str(directory)), progress, optimizer_state)
