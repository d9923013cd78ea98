"""A process reward model for the PRM-beam baseline: a causal backbone plus a 2-way head.

Each child costs one forward (that is the point of the baseline): the score of a prefix is the
head's margin ``logit[safe] - logit[harmful]`` at the prefix's last token (higher = safer).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel


class ProcessRewardModel:
    """Backbone + head + how to lay out the prompt before the response ids."""

    def __init__(
        self,
        model: PreTrainedModel,
        head: torch.nn.Linear,
        prefix_ids: Callable[[str], list[int]],
        *,
        name: str = "prm",
    ) -> None:
        self.model = model
        self.head = head
        self.prefix_ids = prefix_ids
        self.name = name

    def margin(self, hidden: torch.Tensor) -> torch.Tensor:
        """Safety margins ``[n]`` from last-layer hidden states ``[n, hidden]``."""
        with torch.no_grad():
            logits = self.head(hidden.to(self.head.weight.dtype)).float()
        return logits[:, 0] - logits[:, 1]
