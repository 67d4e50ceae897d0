"""Running a model over a dataset in batches."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Logits of ``model`` (in eval mode) for every row of ``x``, as float32 on the CPU."""
    model.eval()
    # arrays from Ray's object store are read-only, which torch warns about even for reading
    inputs = torch.tensor(x) if isinstance(x, np.ndarray) and not x.flags.writeable else torch.as_tensor(x)
    device = next(model.parameters()).device
    if device.type == "cuda":
        # pinned once, so each batch's copy runs without blocking the host (it queues the next)
        inputs = inputs.pin_memory()
    chunks = [model(inputs[i : i + batch_size].to(device, non_blocking=True)).float() for i in range(0, len(inputs), batch_size)]
    return torch.cat(chunks).cpu() if chunks else torch.empty(0)
