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
from pipelines.models.zoo import MODELS, PointedSequential, build_model, init_parameters, mix_points

__all__ = [
    "MODELS",
    "PointedSequential",
    "ModelCard",
    "build_model",
    "init_parameters",
    "load_card",
    "load_model",
    "load_state_dict",
    "mix_points",
    "model_from_state",
    "plain_state_dict",
    "save_checkpoint",
]
