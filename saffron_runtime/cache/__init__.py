"""Trie-shaped KV cache over a per-layer token pool."""

from saffron_runtime.cache.pool import TokenPool
from saffron_runtime.cache.trie import CacheStats, StepOutput, TrieKVCache, TrieNode, TrieSession

__all__ = ["CacheStats", "StepOutput", "TokenPool", "TrieKVCache", "TrieNode", "TrieSession"]
