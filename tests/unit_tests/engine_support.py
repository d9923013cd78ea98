"""A Saffron engine on the tiny models whose MRM scores every token (no unseen mask), shared by the tests of
the monitor on the policy's hidden states and of beam pruning."""

from __future__ import annotations

import torch

from saffron_runtime.models import LoadedModel, MRMTemplate, MultifurcationRewardModel
from saffron_runtime.search import SearchEngine


def tiny_saffron_engine(models) -> SearchEngine:
    """The tiny policy with an MRM on the tiny reward backbone (chatml-like template, nothing masked)."""
    mask = torch.zeros(len(models.tokenizer), dtype=torch.bool)
    mrm = MultifurcationRewardModel(models.reward_backbone, models.tokenizer,
                                    MRMTemplate(prefix="<|im_start|>", separator="\n"), unseen_mask=mask)
    return SearchEngine(LoadedModel(models.policy, models.tokenizer, "tiny"), mrm)
