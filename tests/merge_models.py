"""Small models to merge, shared by the merging tests."""

import torch

from pipelines.seeding import torch_generator


def adamerging_setup(classes=3):
    """A small MLP base, three fine-tunes (random task vectors) and unlabelled inputs."""
    from pipelines.models import build_model

    model = build_model("mlp", (6,), classes, seed=0)
    base = {n: t.detach().clone() for n, t in model.state_dict().items()}
    states = [{n: t + 0.3 * torch.randn(t.shape, generator=torch_generator(10 + k)) for n, t in base.items()}
              for k in range(3)]
    inputs = torch.randn(200, 6, generator=torch_generator(4))
    return model, base, states, inputs
