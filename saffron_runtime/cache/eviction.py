"""Least-recently-used eviction over a set of evictable leaves kept up to date as nodes change.

A node is evictable when it is in the current tree, has no children and no live search references
it. The set changes only when a child is added, a reference is taken or dropped, or a node is
evicted, so an eviction reads the leaves it may free instead of walking the whole trie (as
SGLang's radix cache keeps its evictable leaves).
"""

from __future__ import annotations

import heapq

from saffron_runtime.cache.node import TrieNode


class LruLeaves:
    """The evictable leaves of one tree, evicted oldest ``last_access`` first."""

    def __init__(self, root: TrieNode) -> None:
        self.root = root
        self.leaves: set[TrieNode] = set()

    def _evictable(self, node: TrieNode) -> bool:
        return (
            node is not self.root
            and node.parent is not None
            and node.tree is self.root.tree
            and not node.children
            and node.refs == 0
        )

    def update(self, node: TrieNode) -> None:
        """Re-check one node after its children or references changed."""
        if self._evictable(node):
            self.leaves.add(node)
        else:
            self.leaves.discard(node)

    def child_added(self, parent: TrieNode, child: TrieNode) -> None:
        """A new child: the parent is no longer a leaf, the child is one."""
        self.leaves.discard(parent)
        self.update(child)

    def evict(self, n_slots: int) -> list[int]:
        """Detach up to ``n_slots`` leaves, oldest first (a parent left bare joins the queue);
        return their slots for the pool to free."""
        heap = [(n.last_access, id(n), n) for n in self.leaves]
        heapq.heapify(heap)
        freed: list[int] = []
        while heap and len(freed) < n_slots:
            _, _, node = heapq.heappop(heap)
            parent = node.parent
            assert parent is not None
            del parent.children[node.token]
            self.leaves.discard(node)
            freed.append(node.slot)
            node.parent = None
            if self._evictable(parent):
                self.leaves.add(parent)
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return freed
