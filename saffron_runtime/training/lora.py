"""LoRA settings shared by the MRM and monitor trainers."""

from __future__ import annotations

import torch

from saffron_runtime.errors import ConfigError


def top_layers(model: torch.nn.Module, n: int | None) -> list[int] | None:
    """Indices of the last ``n`` decoder layers (None: all layers).

    LoRA only there means the backward pass stops below them: on CPU the step time falls roughly in
    proportion, while the top of the network (what the heads read) still adapts.
    """
    if n is None:
        return None
    total = int(model.config.num_hidden_layers)
    if n > total:
        raise ConfigError(f"top_layers={n}: the base model has only {total} decoder layers")
    return list(range(total - n, total))
