"""The trie's node and the records its operations return (no model, no pool: plain data)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


class TrieNode:
    """One token in the trie: its parent, its KV slot, its children; ``payload`` is the search's."""

    __slots__ = (
        "token",
        "parent",
        "depth",
        "slot",
        "children",
        "refs",
        "last_access",
        "payload",
        "path",
        "hidden",
        "tree",
        "__weakref__",
    )

    def __init__(self, token: int, parent: TrieNode | None, depth: int, slot: int) -> None:
        self.token = token
        self.parent = parent
        self.depth = depth
        self.slot = slot
        self.children: dict[int, TrieNode] = {}
        self.refs = 0
        self.last_access = 0
        self.payload: Any = None
        self.path: torch.Tensor | None = None  # slot path, cached only while on a frontier
        # the model's last hidden state at this token, kept only while a reader asks for it
        # (TrieKVCache.keep_hidden): a shared monitor's heads score it; freed with the node
        self.hidden: torch.Tensor | None = None
        # which tree the node belongs to (its root's marker): a cleared trie's nodes are not ours
        self.tree: object = parent.tree if parent is not None else object()

    def token_ids(self) -> list[int]:
        """Tokens from the root to this node (a walk up the parents; for results, not the hot path)."""
        out, n = [], self
        while n.parent is not None:
            out.append(n.token)
            n = n.parent
        return out[::-1]

    def __repr__(self) -> str:
        return f"TrieNode(token={self.token}, depth={self.depth}, slot={self.slot})"


@dataclass
class StepOutput:
    """The nodes a step produced and their fp32 outputs (logits and/or last hidden states)."""

    nodes: list[TrieNode]
    logits: torch.Tensor | None
    hidden: torch.Tensor | None
    tokens_computed: int
    kv_bytes_copied: int
    hits: int = 0
    """Tokens this call served from the trie (a prefill's cached prefix; per call, so concurrent
    searches each count their own)."""


@dataclass
class CacheStats:
    """Counters: tokens served from the trie (hits), computed (misses), bytes gathered per step."""

    hits: int = 0
    misses: int = 0
    tokens_computed: int = 0
    forwards: int = 0
    evictions: int = 0
    kv_bytes_copied: int = 0
    peak_bytes: int = 0
    kv_bytes_copied_per_step: list[int] = field(default_factory=list)

    def snapshot(self) -> dict[str, Any]:
        """A JSON-friendly copy without the per-step list."""
        return {k: v for k, v in self.__dict__.items() if k != "kv_bytes_copied_per_step"}
