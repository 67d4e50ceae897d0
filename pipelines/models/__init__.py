"""Models: the registry, deterministic initialisation, safetensors checkpoints."""

from pipelines.models.checkpoints import (
    ModelCard,
    load_card,
    load_model,
    load_state_dict,
    model_from_state,
    plain_state_dict,
    save_checkpoint,
)
from pipelines.models.zoo import MODELS, build_model, init_parameters

__all__ = [
    "MODELS",
    "ModelCard",
    "build_model",
    "init_parameters",
    "load_card",
    "load_model",
    "load_state_dict",
    "model_from_state",
    "plain_state_dict",
    "save_checkpoint",
]
