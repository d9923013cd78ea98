"""Batched gather and scatter of path KV between the token pool and a transformers cache.

Paths are host (CPU) tensors of slot numbers; the gathered KV and the mask live on the pool's device.

A node's path is the slots of its tokens from the root. A frontier's paths are gathered with one
``index_select`` per layer into a left-padded ``DynamicCache`` (whose tensors are adopted, not
copied again), and the new tokens' KV is written back into their slots after the forward.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PretrainedConfig

from saffron_runtime.cache.node import TrieNode
from saffron_runtime.cache.pool import TokenPool


def path_of(node: TrieNode) -> torch.Tensor:
    """The slots from the root to ``node`` (cached on frontier nodes, else a walk up)."""
    if node.path is not None:
        return node.path
    slots, n = [], node
    while n.parent is not None:
        slots.append(n.slot)
        n = n.parent
    return torch.tensor(slots[::-1], dtype=torch.long, device="cpu")


def gather_paths(
    pool: TokenPool, config: PretrainedConfig, paths: list[torch.Tensor]
) -> tuple[DynamicCache, torch.Tensor, int]:
    """A batched cache of the slot paths (left-padded), its 2-D attention mask, and bytes copied.

    Example: paths of lengths 2 and 3 give a cache of width 3; row 0's mask is ``[0, 1, 1]``.
    """
    width = max(int(p.shape[0]) for p in paths)
    # filled row by row on the host (paths are host tensors), then moved in one copy each
    index = torch.zeros((len(paths), width), dtype=torch.long, device="cpu")
    mask = torch.zeros((len(paths), width), dtype=torch.long, device="cpu")
    for i, p in enumerate(paths):
        if p.shape[0]:
            index[i, width - p.shape[0] :] = p
            mask[i, width - p.shape[0] :] = 1
    index, mask = index.to(pool.device), mask.to(pool.device)
    layers = [pool.gather(layer, index) for layer in range(pool.n_layers)] if width else []
    cache = DynamicCache(config=config)
    for layer, (k, v) in enumerate(layers):
        lay = cache.layers[layer]
        lay.lazy_initialization(k, v)
        lay.keys, lay.values = k, v  # adopt the gathered tensors: no second copy
    copied = len(paths) * width * pool.bytes_per_token
    return cache, mask, copied


def write_back(pool: TokenPool, cache: DynamicCache, slots: torch.Tensor, count: int) -> None:
    """Copy the last ``count`` positions of each row's new KV into the pool slots (row-major)."""
    slots = slots.to(pool.device)
    for layer in range(pool.n_layers):
        lay = cache.layers[layer]
        k = lay.keys[:, :, -count:, :].transpose(1, 2).reshape(-1, pool.kv_heads, pool.head_dim)
        v = lay.values[:, :, -count:, :].transpose(1, 2).reshape(-1, pool.kv_heads, pool.head_dim)
        pool.write(layer, slots, k, v)
