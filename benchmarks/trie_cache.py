"""Trie KV cache vs recompute vs private per-beam caches on SmolLM2-135M-Instruct.

Workload: a beam-style search (frontier 8, 48 new tokens, prompts of about 40 tokens, 5 prompts),
plus a 5-turn chat whose every turn resends the history. The beam choices come from the trie run
and are replayed exactly by the other two ways, so all three do the same search. Every way runs
the frontier as one batch with ``logits_to_keep=1``.

    python benchmarks/trie_cache.py [--json] [--prompts 5] [--new-tokens 48] [--width 8]
"""

from __future__ import annotations

import time

import torch
from _common import parser, report, setup
from transformers import DynamicCache

from saffron_runtime.cache import TrieKVCache, TrieSession
from saffron_runtime.models import load_policy
from saffron_runtime.models.kv import kv_kwargs, returned_kv

PROMPTS = [
    "Explain in a few sentences why the sky looks blue during the day and red at sunset, for a curious child.",
    "Write a short, friendly note to a neighbour asking them to water my plants while I am away next week.",
    "List three practical tips for someone who is learning to cook simple vegetarian meals at home on a budget.",
    "Describe how a bicycle gear system works and why lower gears make it easier to ride up a steep hill.",
    "Summarise the main differences between weather and climate, and give one everyday example of each.",
]
CHAT = ["Hi! Can you suggest a name for a small bakery?", "Why did you pick that one?",
        "Give me a slogan for it.", "Make the slogan shorter.", "Thanks! Any colour scheme ideas?"]


def chat_ids(tok, messages) -> list[int]:
    return list(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False))


def beam_with_trie(cache: TrieKVCache, prompt: list[int], width: int, steps: int):
    """Beam search by cumulative log-prob through the trie; returns the per-step plan."""
    plan = []
    with TrieSession(cache) as live:
        out = cache.prefill(prompt, session=live)
        nodes, scores, logits = out.nodes, torch.zeros(1), out.logits
        for _ in range(steps):
            logp = torch.log_softmax(logits, -1) + scores[:, None]
            top = torch.topk(logp.flatten(), width)
            parent_idx = (top.indices // logp.shape[1]).tolist()
            tokens = (top.indices % logp.shape[1]).tolist()
            plan.append((parent_idx, tokens))
            so = cache.extend([nodes[i] for i in parent_idx], tokens, session=live)
            live.set_live(so.nodes)
            nodes, scores, logits = so.nodes, top.values, so.logits
    return plan


@torch.no_grad()
def replay_recompute(model, prompt, plan) -> int:
    """Every step recomputes every beam's whole sequence (batched, left-padded)."""
    seqs, computed = [list(prompt)], 0
    for parent_idx, tokens in plan:
        seqs = [seqs[i] + [t] for i, t in zip(parent_idx, tokens, strict=True)]
        width = max(len(s) for s in seqs)
        ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
        att = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
        model(input_ids=ids, attention_mask=att, logits_to_keep=1)
        computed += sum(len(s) for s in seqs)
    return computed


@torch.no_grad()
def replay_private(model, prompt, plan) -> int:
    """HF beam search style: one private cache per beam, reordered with batch_select_indices."""
    out = model(input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1)
    cache: DynamicCache = returned_kv(out)
    peak, first = 0, True
    for parent_idx, tokens in plan:
        if first:
            cache.batch_repeat_interleave(len(parent_idx))
            first = False
        cache.batch_select_indices(torch.tensor(parent_idx))
        out = model(input_ids=torch.tensor([[t] for t in tokens]), **kv_kwargs(model, cache), use_cache=True,
                    logits_to_keep=1)
        cache = returned_kv(out)
        peak = max(peak, sum(la.keys.numel() * la.keys.element_size() * 2 for la in cache.layers))
    return peak


def run_chat(cache: TrieKVCache, tok, turns: list[str], answer_tokens: int) -> tuple[int, int]:
    """A chat whose every request resends the history; greedy answers through the trie."""
    messages, sent, hits0 = [], 0, cache.stats.hits
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    for user in turns:
        messages.append({"role": "user", "content": user})
        ids = chat_ids(tok, messages)
        sent += len(ids)
        with TrieSession(cache) as live:
            out = cache.prefill(ids, session=live)
            node, logits, answer = out.nodes[0], out.logits, []
            for _ in range(answer_tokens):
                t = int(logits[0].argmax())
                if t == eos:
                    break
                answer.append(t)
                so = cache.extend([node], [t], session=live)
                live.set_live(so.nodes)
                node, logits = so.nodes[0], so.logits
        messages.append({"role": "assistant", "content": tok.decode(answer)})
    return cache.stats.hits - hits0, sent


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--width", type=int, default=8)
    args = p.parse_args()
    setup(args)
    loaded = load_policy("smollm2", dtype="float32")
    model, tok = loaded.model, loaded.tokenizer
    prompts = [chat_ids(tok, [{"role": "user", "content": q}]) for q in PROMPTS[: args.prompts]]
    r = {"prompt_tokens_mean": sum(map(len, prompts)) / len(prompts), "width": args.width,
         "new_tokens": args.new_tokens, "unique_nodes": 0, "policy_tokens_computed": 0, "recompute_tokens": 0,
         "wall_s_trie": 0.0, "wall_s_recompute": 0.0, "wall_s_private_cache": 0.0, "peak_cache_bytes": 0,
         "peak_cache_bytes_private": 0}
    replay_private(model, prompts[0][:8], [([0], [1])])  # warm-up
    for prompt in prompts:
        cache = TrieKVCache(model)
        t0 = time.perf_counter()
        plan = beam_with_trie(cache, prompt, args.width, args.new_tokens)
        r["wall_s_trie"] += time.perf_counter() - t0
        r["unique_nodes"] += cache.num_nodes
        r["policy_tokens_computed"] += cache.stats.tokens_computed
        r["peak_cache_bytes"] = max(r["peak_cache_bytes"], cache.stats.peak_bytes)
        t0 = time.perf_counter()
        r["recompute_tokens"] += replay_recompute(model, prompt, plan)
        r["wall_s_recompute"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        r["peak_cache_bytes_private"] = max(r["peak_cache_bytes_private"], replay_private(model, prompt, plan))
        r["wall_s_private_cache"] += time.perf_counter() - t0
    r["tokens_per_unique_node"] = r["policy_tokens_computed"] / r["unique_nodes"]
    r["speedup_vs_recompute"] = r["wall_s_recompute"] / r["wall_s_trie"]
    r["wall_ratio_vs_private"] = r["wall_s_trie"] / r["wall_s_private_cache"]
    r["peak_bytes_ratio_vs_private"] = r["peak_cache_bytes"] / r["peak_cache_bytes_private"]
    chat_cache = TrieKVCache(model)
    hits, sent = run_chat(chat_cache, tok, CHAT, answer_tokens=24)
    r["chat_tokens_sent"] = sent
    r["chat_tokens_from_trie"] = hits
    r["chat_reuse_ratio"] = hits / sent
    report(args, "trie KV cache vs recompute vs private caches (SmolLM2-135M-Instruct)", r)


if __name__ == "__main__":
    main()
