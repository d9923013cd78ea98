"""Trie-shaped KV cache: beams share every common prefix, each token's KV is computed and stored once.

A node is ``(parent, token)`` and points to one slot of a per-layer :class:`TokenPool`. Running a
frontier gathers each node's path KV with one ``index_select`` per layer into a transformers
``DynamicCache`` (left-padded, explicit positions = depth), computes only the one new token per node
(``logits_to_keep=1``) and writes its KV back. Keys are stored after RoPE at their absolute position,
so a node's KV depends only on its path: that is what makes sharing exact.

The trie lives with the model (:meth:`TrieKVCache.for_model`), so a later request that repeats a
conversation's history reuses its KV. A byte budget evicts, least recently used first, leaves that no
live search references (a :class:`TrieSession` pins what a search holds). All operations are
serialised by one lock, so concurrent searches on one model share the trie safely; a
:class:`~saffron_runtime.cache.batcher.StepBatcher` (``batcher``) merges their steps into one forward.

Hidden states: while a reader holds :meth:`TrieKVCache.hold_hidden` (a monitor whose heads read
this model's own hidden states), every node a forward computes keeps its last hidden state in
``TrieNode.hidden`` (``hidden_size`` values in the model's dtype: 2.3 KB in fp32 for SmolLM2-135M),
released with the node when it is evicted. Off by default: nothing is kept unless asked for.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache, PreTrainedModel

from saffron_runtime.cache.eviction import LruLeaves
from saffron_runtime.cache.node import CacheStats, StepOutput, TrieNode
from saffron_runtime.cache.paths import gather_paths, path_of, write_back
from saffron_runtime.cache.pool import TokenPool
from saffron_runtime.errors import ConfigError
from saffron_runtime.models.kv import kv_kwargs, returned_kv

if TYPE_CHECKING:
    from saffron_runtime.cache.batcher import StepBatcher

__all__ = ["CacheStats", "StepOutput", "TrieKVCache", "TrieNode", "TrieSession"]

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
        self._leaves = LruLeaves(self.root)
        self._hidden_readers = 0
        self.batcher: StepBatcher | None = None
        """Set by a server that steps many searches at once: its member threads' extends are merged."""

    # ------------------------------------------------------------------ kept hidden states
    @property
    def keep_hidden(self) -> bool:
        """Whether forwards keep each new node's last hidden state (``TrieNode.hidden``)."""
        return self._hidden_readers > 0

    def hold_hidden(self) -> None:
        """Start keeping hidden states on new nodes (one call per reader; see :meth:`release_hidden`)."""
        with self.lock:
            self._hidden_readers += 1

    def release_hidden(self) -> None:
        """A reader is done; once none is left, forwards stop keeping hidden states."""
        with self.lock:
            self._hidden_readers = max(0, self._hidden_readers - 1)

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

    def _new_child(self, parent: TrieNode, token: int, slot: int) -> TrieNode:
        child = TrieNode(token, parent, parent.depth + 1, slot)
        parent.children[token] = child
        self._nodes += 1
        self._leaves.child_added(parent, child)
        return child

    def _forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        cache: DynamicCache,
        want_logits: bool,
        want_hidden: bool,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, DynamicCache, torch.Tensor | None]:
        """Logits and fp32 hidden states as asked, the cache, and the raw last hidden states
        ``[batch, seq, hidden]`` in the model's dtype when :attr:`keep_hidden` is on."""
        device = next(self.model.parameters()).device
        keep = self.keep_hidden
        with torch.no_grad():
            out = self.model(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                position_ids=position_ids.to(device),
                **kv_kwargs(self.model, cache),
                use_cache=True,
                logits_to_keep=1,
                output_hidden_states=want_hidden or keep,
            )
        self.stats.forwards += 1
        logits = out.logits[:, -1, :].float() if want_logits else None
        hidden = out.hidden_states[-1].float() if want_hidden else None
        kept = out.hidden_states[-1] if keep else None
        return logits, hidden, returned_kv(out), kept

    def _touch(self, node: TrieNode) -> None:
        node.last_access = next(self._clock)

    def _ref(self, node: TrieNode) -> None:
        node.refs += 1
        self._leaves.update(node)

    def _unref(self, node: TrieNode) -> None:
        node.refs -= 1
        if node.refs == 0:
            self._leaves.update(node)

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
            pool = self._ensure_pool()
            past = path_of(node)
            cache, mask, copied = gather_paths(pool, self.model.config, [past])
            n_new = len(rest)
            # reuse the slot of an already-cached last token, allocate the rest
            existing_last = node.children.get(rest[0]) if n_new == 1 else None
            slots = [existing_last.slot] if existing_last is not None else pool.alloc(n_new)
            dev = pool.device
            att = torch.cat([mask, torch.ones((1, n_new), dtype=torch.long, device=dev)], dim=1)
            pos = torch.arange(node.depth, node.depth + n_new, device=dev).unsqueeze(0)
            logits, hidden, cache, kept = self._forward(
                torch.tensor([rest], device=dev), att, pos, cache, True, want_hidden
            )
            write_back(pool, cache, torch.tensor(slots, device="cpu"), n_new)
            for i, (t, s) in enumerate(zip(rest, slots, strict=True)):
                child = node.children.get(t)
                node = child if child is not None else self._new_child(node, t, s)
                if kept is not None:
                    node.hidden = kept[0, i]
                self._touch(node)
            node.path = torch.cat([past, torch.tensor(slots, dtype=torch.long, device="cpu")])
            self.stats.hits += matched
            self.stats.misses += n_new if existing_last is None else 0
            self.stats.tokens_computed += n_new
            self.stats.kv_bytes_copied += copied
            self.stats.kv_bytes_copied_per_step.append(copied)
            if session is not None:
                session.pin([node])
            self._after_write()
            h = hidden[:, -1, :] if hidden is not None else None
            return StepOutput([node], logits, h, n_new, copied, hits=matched)

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
        batcher = self.batcher
        if batcher is not None and batcher.is_member():  # merged with other searches' steps
            return batcher.extend(self, parents, tokens, session=session,
                                  want_logits=want_logits, want_hidden=want_hidden)
        return self.extend_now(parents, tokens, session=session, want_logits=want_logits,
                               want_hidden=want_hidden)

    def extend_now(
        self,
        parents: Sequence[TrieNode],
        tokens: Sequence[int],
        *,
        session: TrieSession | None = None,
        want_logits: bool = True,
        want_hidden: bool = False,
    ) -> StepOutput:
        """:meth:`extend` in one forward now, never through the batcher (which calls this)."""
        with self.lock:
            pool = self._ensure_pool()
            order, row_of = _unique_pairs(parents, tokens)
            paths = [path_of(p) for p, _ in order]
            cache, mask, copied = gather_paths(pool, self.model.config, paths)
            new_pairs = [(p, t) for p, t in order if t not in p.children]
            fresh = iter(pool.alloc(len(new_pairs)))
            slots = [p.children[t].slot if t in p.children else next(fresh) for p, t in order]
            dev = pool.device
            att = torch.cat([mask, torch.ones((len(order), 1), dtype=torch.long, device=dev)], dim=1)
            pos = torch.tensor([[p.depth] for p, _ in order], device=dev)
            ids = torch.tensor([[t] for _, t in order], device=dev)
            logits, hidden, cache, kept = self._forward(
                ids, att, pos, cache, want_logits, want_hidden
            )
            slot_t = torch.tensor(slots, dtype=torch.long, device="cpu")
            write_back(pool, cache, slot_t, 1)
            nodes = []
            for row, ((p, t), s, path) in enumerate(zip(order, slots, paths, strict=True)):
                child = p.children.get(t) or self._new_child(p, t, s)
                if kept is not None:
                    child.hidden = kept[row, -1]
                child.path = torch.cat([path, torch.tensor([s], dtype=torch.long, device="cpu")])
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
            idx = torch.tensor(row_of, device=dev)
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
            excess = self.current_bytes - target_bytes
            per = self.pool.bytes_per_token
            freed = self._leaves.evict(-(-excess // per) if excess > 0 else 0)
            self._nodes -= len(freed)
            self.pool.free(freed)
            self.stats.evictions += len(freed)
            return len(freed)

    def clear(self) -> None:
        """Drop every node and the pool (e.g. after the model's weights changed)."""
        with self.lock:
            self.root = TrieNode(-1, None, 0, -1)
            self.pool = None
            self._nodes = 0
            self._leaves = LruLeaves(self.root)


class TrieSession:
    """What one live search references; pinned nodes (and so their paths) are never evicted."""

    def __init__(self, cache: TrieKVCache) -> None:
        self.cache = cache
        self._pinned: list[TrieNode] = []

    def pin(self, nodes: Sequence[TrieNode]) -> None:
        """Reference nodes until :meth:`set_live` drops them or the session closes."""
        with self.cache.lock:
            for n in nodes:
                self.cache._ref(n)
                self._pinned.append(n)

    def set_live(self, nodes: Sequence[TrieNode]) -> None:
        """Replace the referenced set by ``nodes`` (the search's current frontier and finished beams)."""
        with self.cache.lock:
            old = self._pinned
            self._pinned = []
            self.pin(nodes)
            for n in old:
                self.cache._unref(n)
            self.cache.enforce_budget()

    def close(self) -> None:
        """Release every reference."""
        self.set_live([])

    def __enter__(self) -> TrieSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _unique_pairs(
    parents: Sequence[TrieNode], tokens: Sequence[int]
) -> tuple[list[tuple[TrieNode, int]], list[int]]:
    """The distinct ``(parent, token)`` pairs in first-seen order, and each input's row among them."""
    unique: dict[tuple[int, int], int] = {}
    order: list[tuple[TrieNode, int]] = []
    row_of: list[int] = []
    for p, t in zip(parents, tokens, strict=True):
        key = (id(p), int(t))
        if key not in unique:
            unique[key] = len(order)
            order.append((p, int(t)))
        row_of.append(unique[key])
    return order, row_of
