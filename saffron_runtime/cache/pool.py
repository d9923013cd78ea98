"""Per-layer token pool: each cached token's key/value lives in one slot of a preallocated tensor.

Trie nodes point to slots (as SGLang's radix cache points into ``token_to_kv_pool``), so a batch of
paths is gathered with one ``index_select`` per layer and never re-concatenated token by token.
"""

from __future__ import annotations

import torch


class TokenPool:
    """Slots of ``[kv_heads, head_dim]`` keys and values for every layer; grows by doubling."""

    def __init__(
        self,
        n_layers: int,
        kv_heads: int,
        head_dim: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        capacity: int = 256,
    ) -> None:
        self.n_layers, self.kv_heads, self.head_dim = n_layers, kv_heads, head_dim
        self.dtype, self.device = dtype, device
        shape = (capacity, kv_heads, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self._free = list(range(capacity - 1, -1, -1))
        self.used = 0

    @property
    def capacity(self) -> int:
        """Number of slots allocated (used or free)."""
        return self.keys[0].shape[0]

    @property
    def bytes_per_token(self) -> int:
        """Bytes one token's keys and values take over all layers."""
        elt = torch.finfo(self.dtype).bits // 8 if self.dtype.is_floating_point else 1
        return 2 * self.n_layers * self.kv_heads * self.head_dim * elt

    def _grow(self, need: int) -> None:
        old = self.capacity
        new = max(old * 2, old + need)
        for store in (self.keys, self.values):
            for i, t in enumerate(store):
                bigger = torch.zeros(
                    (new, self.kv_heads, self.head_dim), dtype=self.dtype, device=self.device
                )
                bigger[:old] = t
                store[i] = bigger
        self._free = list(range(new - 1, old - 1, -1)) + self._free

    def alloc(self, n: int) -> list[int]:
        """Reserve ``n`` slots."""
        if n > len(self._free):
            self._grow(n - len(self._free))
        slots = [self._free.pop() for _ in range(n)]
        self.used += n
        return slots

    def free(self, slots: list[int]) -> None:
        """Return slots to the pool (their contents become garbage)."""
        self._free.extend(slots)
        self.used -= len(slots)

    def write(
        self, layer: int, slots: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> None:
        """Store ``keys``/``values`` ``[n, kv_heads, head_dim]`` into ``slots`` of one layer."""
        self.keys[layer].index_copy_(0, slots, keys.to(self.dtype))
        self.values[layer].index_copy_(0, slots, values.to(self.dtype))

    def gather(self, layer: int, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[batch, kv_heads, length, head_dim]`` for a ``[batch, length]`` slot index."""
        b, n = index.shape
        flat = index.reshape(-1)
        k = self.keys[layer].index_select(0, flat).view(b, n, self.kv_heads, self.head_dim)
        v = self.values[layer].index_select(0, flat).view(b, n, self.kv_heads, self.head_dim)
        return k.transpose(1, 2), v.transpose(1, 2)
