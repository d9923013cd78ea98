"""Trie KV cache: exact logits for any tree (property test), sharing, eviction, reuse, threads."""

from __future__ import annotations

import threading

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saffron_runtime.cache import TrieKVCache, TrieSession
from saffron_runtime.errors import ConfigError
from saffron_runtime.testing import tiny_causal_lm

VOCAB = 96


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def model(request):
    return tiny_causal_lm(VOCAB, request.param, seed=5)


def reference(model, seq: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([seq])).logits[0, -1].float()


trees = st.lists(  # each step: for some frontier nodes, a list of child tokens
    st.lists(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=3), min_size=1, max_size=3),
    min_size=1, max_size=4,
)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=8), steps=trees,
       budget=st.sampled_from([None, 2000, 6000]), second=st.lists(st.integers(0, VOCAB - 1), max_size=4))
def test_trie_logits_equal_uncached_forward(model, prompt, steps, budget, second):
    cache = TrieKVCache(model, max_bytes=budget)
    with TrieSession(cache) as session:
        out = cache.prefill(prompt, session=session)
        torch.testing.assert_close(out.logits[0], reference(model, prompt), atol=1e-4, rtol=0)
        frontier = [(out.nodes[0], prompt)]
        for children in steps:
            parents, toks, seqs = [], [], []
            for (node, seq), kids in zip(frontier, children, strict=False):
                for t in kids:
                    parents.append(node)
                    toks.append(t)
                    seqs.append(seq + [t])
            if not parents:
                break
            so = cache.extend(parents, toks, session=session)
            session.set_live(so.nodes)  # only the frontier stays referenced: the rest may be evicted
            for i, s in enumerate(seqs):
                torch.testing.assert_close(so.logits[i], reference(model, s), atol=1e-4, rtol=0)
            frontier = list(zip(so.nodes, seqs, strict=True))
        if budget is not None:  # within budget, except for what the live frontier's paths need
            keep = set()
            for node, _ in frontier:
                while node.parent is not None:
                    keep.add(id(node))
                    node = node.parent
            assert cache.current_bytes <= max(budget, len(keep) * cache.pool.bytes_per_token)
    # a second request reuses part of the tree (after eviction, if any)
    seq = frontier[0][1][: max(1, len(frontier[0][1]) - 1)] + second
    before = cache.stats.hits
    again = cache.prefill(seq)
    torch.testing.assert_close(again.logits[0], reference(model, seq), atol=1e-4, rtol=0)
    assert cache.stats.hits - before <= len(seq) - 1


def test_shared_prefixes_are_computed_once(model):
    cache = TrieKVCache(model)
    out = cache.prefill([1, 2, 3, 4])
    root = out.nodes[0]
    so = cache.extend([root] * 4, [7, 7, 8, 7])  # three identical children in one batch
    assert so.tokens_computed == 2 and so.nodes[0] is so.nodes[1] is so.nodes[3]
    assert cache.stats.tokens_computed == 6 and cache.num_nodes == 6
    # a later request that repeats the history is served from the trie except its last token
    cache.prefill([1, 2, 3, 4, 7, 9])
    assert cache.stats.hits == 5 and cache.stats.tokens_computed == 7
    assert cache.stats.kv_bytes_copied_per_step[-1] == 5 * cache.pool.bytes_per_token


def test_eviction_is_lru_and_spares_referenced_nodes(model):
    cache = TrieKVCache(model)
    per = None
    with TrieSession(cache) as live:
        a = cache.prefill([1, 2, 3], session=live).nodes[0]
        b = cache.prefill([1, 5, 6]).nodes[0]
        cache.prefill([9, 9])
        per = cache.pool.bytes_per_token
        assert cache.current_bytes == 7 * per
        cache.evict(3 * per)  # unreferenced leaves first, oldest first: [1,5,6] branch then [9,9]
        assert cache.match([1, 2, 3]) is a and cache.match([1, 5, 6]) is not b
        assert cache.current_bytes == 3 * per and cache.stats.evictions == 4
    cache.evict(0)  # now nothing is referenced
    assert cache.num_nodes == 0 and cache.current_bytes == 0
    with pytest.raises(ConfigError, match="max_bytes=0 must be a positive"):
        TrieKVCache(model, max_bytes=0)


def test_trie_lives_with_the_model(model):
    assert TrieKVCache.for_model(model) is TrieKVCache.for_model(model)


def test_peft_wrapped_model(model):
    from peft import LoraConfig, get_peft_model

    base = tiny_causal_lm(VOCAB, seed=9)
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.eval()
    cache = TrieKVCache(peft_model)
    out = cache.prefill([3, 4, 5])
    so = cache.extend([out.nodes[0]] * 2, [6, 7])
    torch.testing.assert_close(so.logits[1], reference(peft_model, [3, 4, 5, 7]), atol=1e-4, rtol=0)


def test_eight_threads_share_one_trie_without_corruption(model):
    cache = TrieKVCache(model, max_bytes=40 * 2 * 2 * 2 * 16 * 4)  # small budget: evictions happen too
    errors: list[BaseException] = []

    def worker(seed: int) -> None:
        try:
            g = torch.Generator().manual_seed(seed)
            with TrieSession(cache) as live:
                seq = [1, 2] + torch.randint(0, VOCAB, (3,), generator=g).tolist()
                node = cache.prefill(seq, session=live).nodes[0]
                for _ in range(5):
                    t = int(torch.randint(0, VOCAB, (1,), generator=g))
                    so = cache.extend([node], [t], session=live)
                    seq = seq + [t]
                    live.set_live(so.nodes)
                    torch.testing.assert_close(so.logits[0], reference(model, seq), atol=1e-4, rtol=0)
                    node = so.nodes[0]
        except BaseException as e:  # noqa: BLE001 - collected and re-raised in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert cache.stats.evictions > 0


def _all_nodes(cache):
    out, stack = [], list(cache.root.children.values())
    while stack:
        n = stack.pop()
        out.append(n)
        stack.extend(n.children.values())
    return out


def test_evictable_leaves_are_kept_up_to_date(model):
    """The leaf set eviction reads equals a full walk's unreferenced leaves after every change,
    and nodes of a cleared tree never join it (their slots belong to a dropped pool)."""
    cache = TrieKVCache(model)

    def check():
        walk = {n for n in _all_nodes(cache) if not n.children and n.refs == 0}
        assert cache._leaves.leaves == walk

    live = TrieSession(cache)
    root = cache.prefill([1, 2, 3], session=live).nodes[0]
    check()
    so = cache.extend([root, root, root], [4, 5, 4], session=live)
    check()
    live.set_live(so.nodes[:1])  # [1,2,3,5] becomes an unreferenced leaf
    check()
    cache.prefill([1, 2, 9])
    check()
    cache.evict(4 * cache.pool.bytes_per_token)
    check()
    assert cache.match([1, 2, 3, 4]).token == 4  # the referenced leaf and its path survive
    cache.clear()
    live.close()  # unpins nodes of the old tree
    assert cache._leaves.leaves == set() and cache.num_nodes == 0
    cache.prefill([7, 8])
    check()
    assert cache.evict(0) == 2 and cache.pool.used == 0
