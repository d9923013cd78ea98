"""A beam of a search: its trie nodes, tokens, score and what its next step needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from saffron_runtime.cache import TrieNode
from saffron_runtime.constraints import ConstraintState


@dataclass(eq=False)
class Beam:
    """One partial (or finished) response; compared by identity, as a frontier holds each once.

    ``logits`` and ``rewards`` are the policy's and the MRM's outputs at the beam's last token.
    Until the beam's own forward has run, ``parent`` is set and ``pnode``/``rnode`` still point to
    the parent's nodes (the forward of a whole frontier is batched).
    """

    pnode: TrieNode
    ids: list[int]
    score: float
    logits: torch.Tensor | None = None
    rnode: TrieNode | None = None
    rewards: torch.Tensor | None = None
    constraint: ConstraintState | None = None
    finished: bool = False
    rank: float = float("-inf")  # the faithful variant's ranking key
    parent: Beam | None = None
    logprob: float = 0.0  # the policy's summed log-probability of ``ids``
    key: float = 0.0  # the search objective's value (what the frontier ranks by)
    guard: object | None = None  # a beam monitor's rule state for this path (flagging.py)


def common_prefix(seqs: Sequence[list[int]]) -> int:
    """Length of the longest common prefix of the sequences (0 for none)."""
    if not seqs:
        return 0
    n, first = 0, seqs[0]
    shortest = min(len(x) for x in seqs)
    while n < shortest and all(x[n] == first[n] for x in seqs):
        n += 1
    return n
