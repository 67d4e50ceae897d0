"""Model checkpoints: weights as safetensors, a JSON card that says how to rebuild the model.

Nothing here unpickles: a checkpoint directory holds ``model.safetensors`` and ``card.json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, save
from torch import nn

from pipelines import storage
from pipelines.errors import DataError
from pipelines.models.zoo import build_model

WEIGHTS = "model.safetensors"
CARD = "card.json"


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to rebuild a model and to say where it came from."""

    model: str
    input_shape: tuple[int, ...]
    num_classes: int  # outputs: classes, or 1 for a scalar regression target
    seed: int
    info: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> ModelCard:
        try:
            return cls(
                model=str(obj["model"]),
                input_shape=tuple(int(d) for d in obj["input_shape"]),
                num_classes=int(obj["num_classes"]),
                seed=int(obj["seed"]),
                info=dict(obj.get("info", {})),
                task=str(obj.get("task", "classification")),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"model card is malformed: {error!r}") from None


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict of ``model`` (unwrapping DDP), contiguous CPU tensors, ready for safetensors."""
    module = model.module if hasattr(model, "module") else model
    return {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def state_dict_bytes(state: dict[str, torch.Tensor]) -> bytes:
    return save({k: v.contiguous() for k, v in state.items()})


def save_checkpoint(directory: str, state: dict[str, torch.Tensor], card: ModelCard) -> None:
    """Write ``model.safetensors`` and ``card.json`` into ``directory`` (any fsspec URL), atomically each."""
    storage.write_bytes(storage.join(directory, WEIGHTS), state_dict_bytes(state))
    storage.write_json(storage.join(directory, CARD), asdict(card))


def tensor_order(name: str) -> tuple:
    """A sort key that puts ``layer2.10.weight`` after ``layer2.9.bias``: numbers as numbers."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in name.split("."))


def load_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Weights from a safetensors file (or a checkpoint directory holding one), in name order
    (:func:`tensor_order`): the loader's own order changes from one process to the next, and a
    merge over the whole model (PCB) or a depth map must not."""
    url = path if str(path).endswith(".safetensors") else storage.join(path, WEIGHTS)
    try:
        tensors = load(storage.read_bytes(url))
        return {name: tensors[name] for name in sorted(tensors, key=tensor_order)}
    except FileNotFoundError:
        raise DataError(f"no model weights at {url}") from None
    except SafetensorError as error:  # a damaged header or a truncated file
        raise DataError(f"{url}: not readable safetensors ({error}); re-run the stage that writes it") from None


def load_card(directory: str) -> ModelCard:
    url = storage.join(directory, CARD)
    try:
        return ModelCard.from_json(storage.read_json(url))
    except FileNotFoundError:
        raise DataError(f"no model card at {url}") from None
    except (ValueError, KeyError, TypeError) as error:  # not JSON, or not a card
        raise DataError(f"{url}: not a model card ({type(error).__name__}: {error}); re-run the stage that writes it") from None


def model_from_state(card: ModelCard, state: dict[str, torch.Tensor]) -> nn.Module:
    """Rebuild the architecture on ``card`` and load ``state`` into it (strictly)."""
    model = build_model(card.model, card.input_shape, card.num_classes, card.seed)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise DataError(f"weights do not fit model {card.model!r}: {str(error).splitlines()[0]}") from None
    return model


def load_model(directory: str) -> tuple[nn.Module, ModelCard]:
    """Rebuild the model saved in ``directory``."""
    card = load_card(directory)
    return model_from_state(card, load_state_dict(directory)), card
