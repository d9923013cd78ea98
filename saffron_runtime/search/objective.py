"""What a frontier search ranks children by: the search objective, one small class each.

The paper ranks children by the reward model alone. Among children that are all safe, that choice is
the reward model's noise, and a small policy driven by it drifts into repetition ("bear bear carry
bear ..."). The objectives here anchor the search on the policy:

* ``reward``: the paper's ranking, by the child's reward alone;
* ``safe_likelihood`` (the default): children the reward model predicts safe (reward at or above
  ``safe_threshold``) rank by the policy's mean log-probability of the whole beam, so the search is the
  policy's own beam search wherever that is safe; children predicted unsafe rank after every safe one,
  by reward, so the reward decides only where the policy's preferred children are predicted unsafe;
* ``reward_plus_logprob``: reward plus ``logprob_weight`` times the mean log-probability.

Keys use the mean (length-normalised) log-probability, so finished hypotheses of different lengths
compare fairly, as Hugging Face's beam search does with ``length_penalty=1``.
"""

from __future__ import annotations

from typing import Protocol

import torch

from saffron_runtime.search.config import SearchConfig

UNSAFE_OFFSET = -1.0e4
"""Added to the reward of a child predicted unsafe, so it ranks below every safe child (mean
log-probabilities are far above it) but unsafe children still rank among themselves by reward."""


class Objective(Protocol):
    """Ranking keys of candidate children (higher is better)."""

    def __call__(
        self, rewards: torch.Tensor, cum_logprobs: torch.Tensor, length: int
    ) -> torch.Tensor:
        """``rewards`` and ``cum_logprobs`` (the beam's summed log-probability including the child)
        are ``[n]``; ``length`` is the children's response length in tokens."""
        ...


class RewardObjective:
    """The paper's ranking: the child's reward."""

    def __call__(self, rewards: torch.Tensor, cum_logprobs: torch.Tensor, length: int) -> torch.Tensor:
        return rewards


class SafeLikelihood:
    """The policy's mean log-probability among children predicted safe; among the others, reward
    (plus ``unsafe_weight`` times the mean log-probability)."""

    def __init__(self, threshold: float, unsafe_weight: float = 0.0) -> None:
        self.threshold = threshold
        self.unsafe_weight = unsafe_weight

    def __call__(self, rewards: torch.Tensor, cum_logprobs: torch.Tensor, length: int) -> torch.Tensor:
        mean_logprob = cum_logprobs / max(length, 1)
        unsafe = UNSAFE_OFFSET + rewards
        if self.unsafe_weight:
            unsafe = unsafe + self.unsafe_weight * mean_logprob
        return torch.where(rewards >= self.threshold, mean_logprob, unsafe)


class RewardPlusLogprob:
    """Reward plus a weighted mean log-probability of the beam."""

    def __init__(self, weight: float) -> None:
        self.weight = weight

    def __call__(self, rewards: torch.Tensor, cum_logprobs: torch.Tensor, length: int) -> torch.Tensor:
        return rewards + self.weight * cum_logprobs / max(length, 1)


def make_objective(config: SearchConfig) -> Objective:
    """The objective a search config names."""
    if config.objective == "safe_likelihood":
        return SafeLikelihood(config.safe_threshold, config.unsafe_logprob_weight)
    if config.objective == "reward_plus_logprob":
        return RewardPlusLogprob(config.logprob_weight)
    return RewardObjective()
