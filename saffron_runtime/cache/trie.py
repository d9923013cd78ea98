"""Trie-shaped KV cache: beams share every common prefix, each token's KV is computed and stored once.

A node is ``(parent, token)`` and points to one slot of a per-layer :class:`TokenPool`. Running a
frontier gathers each node's path KV with one ``index_select`` per layer into a transformers
``DynamicCache`` (left-padded, explicit positions = depth), computes only the one new token per node
(``logits_to_keep=1``) and writes its KV back. Keys are stored after RoPE at their absolute position,
so a node's KV depends only on its path: that is what makes sharing exact.

The trie lives with the model (:meth:`TrieKVCache.for_model`), so a later request that repeats a
conversation's history reuses its KV. A byte budget evicts, least recently used first, leaves that no
live search references (a :class:`TrieSession` pins what a search holds). All operations are
serialised by one lock, so concurrent searches on one model share the trie safely.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache, PreTrainedModel

from saffron_runtime.cache.pool import TokenPool
from saffron_runtime.errors import ConfigError
from saffron_runtime.models.kv import kv_kwargs, returned_kv


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


_REGISTRY: weakref.WeakKeyDictionary[torch.nn.Module, TrieKVCache] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


class TrieKVCache:
    """The trie plus its token pool for one model."""

    def __init__(self, model: PreTrainedModel, *, max_bytes: int | None = None) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ConfigError(
                f"max_bytes={max_bytes} must be a positive number of bytes (or None for no budget)"
            )
        self.model = model
        self.max_bytes = max_bytes
        self.root = TrieNode(-1, None, 0, -1)
        self.pool: TokenPool | None = None
        self.stats = CacheStats()
        self.lock = threading.RLock()
        self._clock = itertools.count(1)
        self._nodes = 0

    @classmethod
    def for_model(cls, model: PreTrainedModel, *, max_bytes: int | None = None) -> TrieKVCache:
        """The trie that lives with ``model`` (created on first use); later requests share it."""
        with _REGISTRY_LOCK:
            cache = _REGISTRY.get(model)
            if cache is None:
                cache = cls(model, max_bytes=max_bytes)
                _REGISTRY[model] = cache
            elif max_bytes is not None:
                cache.max_bytes = max_bytes
            return cache

    # ------------------------------------------------------------------ sizes
    @property
    def current_bytes(self) -> int:
        """Bytes of KV held by trie nodes now."""
        return 0 if self.pool is None else self.pool.used * self.pool.bytes_per_token

    @property
    def num_nodes(self) -> int:
        """Nodes in the trie, the root excluded."""
        return self._nodes

    def _ensure_pool(self) -> TokenPool:
        if self.pool is None:
            cfg = self.model.config
            heads = cfg.num_attention_heads
            kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
            head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
            param = next(self.model.parameters())
            self.pool = TokenPool(
                cfg.num_hidden_layers, kv_heads, head_dim, dtype=param.dtype, device=param.device
            )
        return self.pool

    # ------------------------------------------------------------------ paths
    def _path_of(self, node: TrieNode) -> torch.Tensor:
        if node.path is not None:
            return node.path
        slots, n = [], node
        while n.parent is not None:
            slots.append(n.slot)
            n = n.parent
        return torch.tensor(slots[::-1], dtype=torch.long)

    def _gather(self, paths: list[torch.Tensor]) -> tuple[DynamicCache, torch.Tensor, int]:
        """A batched cache of the given slot paths (left-padded), its 2-D mask, and bytes copied."""
        pool = self._ensure_pool()
        width = max(int(p.shape[0]) for p in paths)
        index = torch.zeros((len(paths), width), dtype=torch.long)
        mask = torch.zeros((len(paths), width), dtype=torch.long)
        for i, p in enumerate(paths):
            if p.shape[0]:
                index[i, width - p.shape[0] :] = p
                mask[i, width - p.shape[0] :] = 1
        index = index.to(pool.device)
        layers = [pool.gather(layer, index) for layer in range(pool.n_layers)] if width else []
        cache = DynamicCache(config=self.model.config)
        for layer, (k, v) in enumerate(layers):
            lay = cache.layers[layer]
            lay.lazy_initialization(k, v)
            lay.keys, lay.values = k, v  # adopt the gathered tensors: no second copy
        copied = len(paths) * width * pool.bytes_per_token
        return cache, mask, copied

    def _new_child(self, parent: TrieNode, token: int, slot: int) -> TrieNode:
        child = TrieNode(token, parent, parent.depth + 1, slot)
        parent.children[token] = child
        self._nodes += 1
        return child

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
        want_logits: bool,
        want_hidden: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, DynamicCache]:
        device = next(self.model.parameters()).device
        with torch.no_grad():
            out = self.model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device),
                **kv_kwargs(self.model, cache),
                use_cache=True,
                logits_to_keep=1,
                output_hidden_states=want_hidden,
            )
        self.stats.forwards += 1
        logits = out.logits[:, -1, :].float() if want_logits else None
        hidden = out.hidden_states[-1].float() if want_hidden else None
        return logits, hidden, returned_kv(out)

    def _write_back(self, cache: DynamicCache, slots: torch.Tensor, count: int) -> None:
        """Copy the last ``count`` positions of each row's new KV into the pool slots (row-major)."""
        pool = self._ensure_pool()
        for layer in range(pool.n_layers):
            lay = cache.layers[layer]
            k = lay.keys[:, :, -count:, :].transpose(1, 2).reshape(-1, pool.kv_heads, pool.head_dim)
            v = (
                lay.values[:, :, -count:, :]
                .transpose(1, 2)
                .reshape(-1, pool.kv_heads, pool.head_dim)
            )
            pool.write(layer, slots.to(pool.device), k, v)

    def _touch(self, node: TrieNode) -> None:
        node.last_access = next(self._clock)

    # ------------------------------------------------------------------ public operations
    def match(self, token_ids: Sequence[int]) -> TrieNode:
        """The deepest node along ``token_ids`` already in the trie (the root if none)."""
        with self.lock:
            node = self.root
            for t in token_ids:
                nxt = node.children.get(int(t))
                if nxt is None:
                    break
                node = nxt
            return node

    def prefill(
        self,
        token_ids: Sequence[int],
        *,
        session: TrieSession | None = None,
        want_hidden: bool = False,
    ) -> StepOutput:
        """Insert a sequence, computing only the part not cached (in one forward); outputs are for its
        last token. The last token is always run (its outputs are not kept), so at least one token
        is computed; every earlier cached token is a hit."""
        ids = [int(t) for t in token_ids]
        if not ids:
            raise ConfigError("prefill needs at least one token")
        with self.lock:
            node, matched = self.root, 0
            for t in ids[:-1]:
                nxt = node.children.get(t)
                if nxt is None:
                    break
                node = nxt
                matched += 1
                self._touch(node)
            rest = ids[matched:]
            past = self._path_of(node)
            cache, mask, copied = self._gather([past])
            n_new = len(rest)
            pool = self._ensure_pool()
            # reuse the slot of an already-cached last token, allocate the rest
            existing_last = node.children.get(rest[0]) if n_new == 1 else None
            slots = [existing_last.slot] if existing_last is not None else pool.alloc(n_new)
            att = torch.cat([mask, torch.ones((1, n_new), dtype=torch.long)], dim=1)
            pos = torch.arange(node.depth, node.depth + n_new).unsqueeze(0)
            logits, hidden, cache = self._forward(
                torch.tensor([rest]), att, pos, cache, True, want_hidden
            )
            self._write_back(cache, torch.tensor(slots), n_new)
            for t, s in zip(rest, slots, strict=True):
                child = node.children.get(t)
                node = child if child is not None else self._new_child(node, t, s)
                self._touch(node)
            node.path = torch.cat([past, torch.tensor(slots, dtype=torch.long)])
            self.stats.hits += matched
            self.stats.misses += n_new if existing_last is None else 0
            self.stats.tokens_computed += n_new
            self.stats.kv_bytes_copied += copied
            self.stats.kv_bytes_copied_per_step.append(copied)
            if session is not None:
                session.pin([node])
            self._after_write()
            h = hidden[:, -1, :] if hidden is not None else None
            return StepOutput([node], logits, h, n_new, copied)

    def extend(
        self,
        parents: Sequence[TrieNode],
        tokens: Sequence[int],
        *,
        session: TrieSession | None = None,
        want_logits: bool = True,
        want_hidden: bool = False,
    ) -> StepOutput:
        """Create children ``(parents[i], tokens[i])`` and compute them in one batched forward.

        Identical pairs are computed once; ``nodes[i]`` and output row ``i`` belong to pair ``i``.
        """
        if len(parents) != len(tokens):
            raise ConfigError("extend needs one token per parent")
        if not parents:
            return StepOutput([], None, None, 0, 0)
        with self.lock:
            pool = self._ensure_pool()
            unique: dict[tuple[int, int], int] = {}
            order: list[tuple[TrieNode, int]] = []
            row_of: list[int] = []
            for p, t in zip(parents, tokens, strict=True):
                key = (id(p), int(t))
                if key not in unique:
                    unique[key] = len(order)
                    order.append((p, int(t)))
                row_of.append(unique[key])
            paths = [self._path_of(p) for p, _ in order]
            cache, mask, copied = self._gather(paths)
            new_pairs = [(p, t) for p, t in order if t not in p.children]
            fresh = iter(pool.alloc(len(new_pairs)))
            slots = [p.children[t].slot if t in p.children else next(fresh) for p, t in order]
            att = torch.cat([mask, torch.ones((len(order), 1), dtype=torch.long)], dim=1)
            pos = torch.tensor([[p.depth] for p, _ in order])
            ids = torch.tensor([[t] for _, t in order])
            logits, hidden, cache = self._forward(ids, att, pos, cache, want_logits, want_hidden)
            slot_t = torch.tensor(slots, dtype=torch.long)
            self._write_back(cache, slot_t, 1)
            nodes = []
            for (p, t), s, path in zip(order, slots, paths, strict=True):
                child = p.children.get(t) or self._new_child(p, t, s)
                child.path = torch.cat([path, torch.tensor([s], dtype=torch.long)])
                self._touch(child)
                self._touch(p)
                nodes.append(child)
            for p, _ in order:
                p.path = None  # a parent leaves the frontier once expanded
            self.stats.misses += len(new_pairs)
            self.stats.tokens_computed += len(order)
            self.stats.kv_bytes_copied += copied
            self.stats.kv_bytes_copied_per_step.append(copied)
            if session is not None:
                session.pin(nodes)
            self._after_write()
            idx = torch.tensor(row_of)
            return StepOutput(
                nodes=[nodes[r] for r in row_of],
                logits=logits[idx] if logits is not None else None,
                hidden=hidden[idx, -1, :] if hidden is not None else None,
                tokens_computed=len(order),
                kv_bytes_copied=copied,
            )

    # ------------------------------------------------------------------ memory
    def _after_write(self) -> None:
        self.stats.peak_bytes = max(self.stats.peak_bytes, self.current_bytes)
        self.enforce_budget()

    def enforce_budget(self) -> None:
        """Evict down to the byte budget (called after writes and when references are released)."""
        if self.max_bytes is not None and self.current_bytes > self.max_bytes:
            self.evict(self.max_bytes)

    def evict(self, target_bytes: int) -> int:
        """Evict unreferenced leaves, least recently used first, until at most ``target_bytes`` remain."""
        with self.lock:
            if self.pool is None:
                return 0
            per = self.pool.bytes_per_token
            leaves = [n for n in self._iter_nodes() if not n.children and n.refs == 0]
            heap = [(n.last_access, id(n), n) for n in leaves]
            heapq.heapify(heap)
            freed: list[int] = []
            while heap and self.current_bytes - len(freed) * per > target_bytes:
                _, _, n = heapq.heappop(heap)
                parent = n.parent
                assert parent is not None
                del parent.children[n.token]
                freed.append(n.slot)
                self._nodes -= 1
                n.parent = None
                if parent is not self.root and not parent.children and parent.refs == 0:
                    heapq.heappush(heap, (parent.last_access, id(parent), parent))
            self.pool.free(freed)
            self.stats.evictions += len(freed)
            return len(freed)

    def _iter_nodes(self) -> list[TrieNode]:
        out, stack = [], list(self.root.children.values())
        while stack:
            n = stack.pop()
            out.append(n)
            stack.extend(n.children.values())
        return out

    def clear(self) -> None:
        """Drop every node and the pool (e.g. after the model's weights changed)."""
        with self.lock:
            self.root = TrieNode(-1, None, 0, -1)
            self.pool = None
            self._nodes = 0


class TrieSession:
    """What one live search references; pinned nodes (and so their paths) are never evicted."""

    def __init__(self, cache: TrieKVCache) -> None:
        self.cache = cache
        self._pinned: list[TrieNode] = []

    def pin(self, nodes: Sequence[TrieNode]) -> None:
        """Reference nodes until :meth:`set_live` drops them or the session closes."""
        with self.cache.lock:
            for n in nodes:
                n.refs += 1
                self._pinned.append(n)

    def set_live(self, nodes: Sequence[TrieNode]) -> None:
        """Replace the referenced set by ``nodes`` (the search's current frontier and finished beams)."""
        with self.cache.lock:
            old = self._pinned
            self._pinned = []
            self.pin(nodes)
            for n in old:
                n.refs -= 1
            self.cache.enforce_budget()

    def close(self) -> None:
        """Release every reference."""
        self.set_live([])

    def __enter__(self) -> TrieSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
