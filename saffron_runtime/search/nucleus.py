"""The policy's nucleus: the candidate children of a node (top-p at temperature 1)."""

from __future__ import annotations

import torch

_TOP_K = 256
"""How many of the most likely tokens are ranked first; the whole vocabulary is sorted only when
they hold less than ``top_p`` of the mass (a sort of 49k probabilities per beam was ~5% of a step)."""


def nucleus(
    logits: torch.Tensor, top_p: float, banned: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and probabilities of the nucleus, most likely first.

    A token is kept when the probability mass ranked above it is below ``top_p``, so at least one
    survives. ``banned`` (a boolean mask) tokens are removed before normalising, as the reference
    bans EOS on the logits.
    """
    x = logits.float()
    if banned is not None:
        x = x.masked_fill(banned[: x.shape[-1]], float("-inf"))
    probs = torch.softmax(x, dim=-1)
    sorted_p, ids = _ranked(probs, top_p)
    keep = (sorted_p.cumsum(-1) - sorted_p) < top_p
    keep &= sorted_p > 0
    keep[0] = True
    return ids[keep], sorted_p[keep]


def _ranked(probs: torch.Tensor, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The most likely tokens in order, enough of them to hold the nucleus: the top ``_TOP_K`` when
    their mass reaches ``top_p`` (every token after them is then outside the nucleus, and their
    cumulative sums are the full sort's), else the whole vocabulary sorted."""
    if probs.shape[-1] > _TOP_K:
        top_p_values, ids = probs.topk(_TOP_K)
        if float(top_p_values.cumsum(-1)[-1]) >= top_p:
            return top_p_values, ids
    return probs.sort(descending=True)
