"""The policy's nucleus: the candidate children of a node (top-p at temperature 1)."""

from __future__ import annotations

import torch


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
    sorted_p, ids = probs.sort(descending=True)
    keep = (sorted_p.cumsum(-1) - sorted_p) < top_p
    keep &= sorted_p > 0
    keep[0] = True
    return ids[keep], sorted_p[keep]
