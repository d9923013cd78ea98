"""Streaming monitor overhead: per-token cost at position 16 vs 512, and SmolLM2 generation with and
without the monitor watching, in one run. The separate-path monitor is the size of SmolLM2 (SmolLM2's
own backbone with random heads: the cost does not depend on the heads' training).

The default ChatSaffron stack (SmolLM2, bundled MRM, bundled heads monitor on the policy's own hidden
states) is measured guarded and unguarded on the same engine, greedy and Saffron
(``stack_guarded_over_unguarded``), and the heads' own cost per token on the shared path
(``heads_ms_per_token_at_16`` / ``_at_512``: scoring a committed token from the hidden state its
trie node kept, bookkeeping included).

    python benchmarks/monitor_overhead.py [--json] [--gen-tokens 64] [--stack-tokens 32] [--repeats 2]
"""

from __future__ import annotations

import time

import torch
from _common import parser, report, setup

from saffron_runtime.guarded import GuardedGeneration
from saffron_runtime.models import load_policy
from saffron_runtime.models.kv import kv_kwargs, returned_kv
from saffron_runtime.monitor import MonitorRule, SCMMonitor, SCMMonitorModel
from saffron_runtime.monitor.shared import SharedHiddenSession
from saffron_runtime.search import SearchConfig
from saffron_runtime.stack import Stack, StackOptions, build_stack

PROMPT = "Write a long, friendly story about a lighthouse keeper and the sea."


def per_token_ms(monitor: SCMMonitor, ids: list[int], at: int, n: int = 16) -> float:
    s = monitor.open(PROMPT)
    s.feed_ids(ids[:at])
    t0 = time.perf_counter()
    for i in range(at, at + n):
        s.feed_ids([ids[i]])
    return (time.perf_counter() - t0) / n * 1000


@torch.no_grad()
def generate(model, tok, n: int, monitor: SCMMonitor | None) -> float:
    ids = tok.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    session = monitor.open(PROMPT) if monitor else None
    t0 = time.perf_counter()
    out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    for _ in range(n):
        t = out.logits[:, -1].argmax(-1, keepdim=True)
        if session is not None and session.feed_ids([int(t)]) is not None:
            break
        out = model(input_ids=t, **kv_kwargs(model, returned_kv(out)), use_cache=True, logits_to_keep=1)
    return n / (time.perf_counter() - t0)


def stack_tokens_per_s(stack: Stack, method: str, n: int, watched: bool) -> tuple[float, str | None, int]:
    """Tokens/s of one guarded generation on the stack's engine (the monitor on or off), and the
    policy forwards it ran (the search's plus any the monitor's session asked the trie for)."""
    engine = stack.engine_for(method)
    engine.reset_caches()  # cold tries: neither run reuses the other's KV
    config = SearchConfig(method=method, max_new_tokens=n, min_new_tokens=n, budget=4)
    monitor = stack.streaming_monitor if watched else None
    gen = GuardedGeneration(engine, monitor, engine.chat_prompt_ids(PROMPT), config, prompt_text=PROMPT)
    forwards = engine.policy_cache.stats.forwards
    t0 = time.perf_counter()
    for _ in gen:
        pass
    wall = time.perf_counter() - t0
    produced = gen.outcome.stats.steps if gen.outcome.stats else n
    return produced / wall, gen.outcome.monitor_path, engine.policy_cache.stats.forwards - forwards


def stack_ratios(stack: Stack, n: int, repeats: int) -> dict[str, object]:
    """Guarded over unguarded tokens/s per method, alternating runs so noise hits both alike; the
    fastest of the repeats counts (a shared machine only ever slows a run)."""
    out: dict[str, object] = {}
    for method in ("greedy", "saffron"):
        stack_tokens_per_s(stack, method, 4, True)  # warm-up (loads, first-call costs)
        on, off, path = [], [], None
        for _ in range(repeats):
            rate, path, fw_on = stack_tokens_per_s(stack, method, n, True)
            on.append(rate)
            rate_off, _, fw_off = stack_tokens_per_s(stack, method, n, False)
            off.append(rate_off)
        out[f"stack_{method}_policy_forwards_guarded_unguarded"] = [fw_on, fw_off]
        out[f"stack_{method}_guarded_tokens_per_s"] = max(on)  # the least disturbed run of each
        out[f"stack_{method}_unguarded_tokens_per_s"] = max(off)
        out[f"stack_{method}_monitor_path"] = path
    out["stack_guarded_over_unguarded"] = {
        m: out[f"stack_{m}_guarded_tokens_per_s"] / out[f"stack_{m}_unguarded_tokens_per_s"]  # type: ignore[operator]
        for m in ("greedy", "saffron")
    }
    return out


@torch.no_grad()
def heads_ms(stack: Stack, ids: list[int], at: int, n: int = 32) -> float:
    """Per-token cost of the shared path at position ``at``: hidden states already on the trie."""
    engine, model = stack.engine, stack.monitor_model
    assert model is not None
    cache = engine.policy_cache
    context = engine.chat_prompt_ids(PROMPT)
    cache.hold_hidden()
    try:
        cache.prefill(context + ids[: at + n + 1])  # the policy's forward keeps every hidden state
        session = SharedHiddenSession(model, PROMPT, cache, context)
        session.feed_tokens(ids[:at])
        t0 = time.perf_counter()
        for i in range(at, at + n):
            session.feed_tokens([ids[i]])
        elapsed = time.perf_counter() - t0
        session.close()
    finally:
        cache.release_hidden()
    return elapsed / n * 1000


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--gen-tokens", type=int, default=64)
    p.add_argument("--stack-tokens", type=int, default=32, help="new tokens per stack generation")
    p.add_argument("--repeats", type=int, default=3, help="alternating guarded/unguarded pairs")
    args = p.parse_args()
    setup(args)
    policy = load_policy("smollm2", dtype="float32")
    backbone = load_policy("smollm2", dtype="float32")
    torch.manual_seed(0)
    mm = SCMMonitorModel(backbone.model, backbone.tokenizer, rule=MonitorRule(theta=1.0, k=4096))
    monitor = SCMMonitor(mm)
    text = " ".join(["the lighthouse keeper watched the waves roll in under a grey sky"] * 60)
    ids = backbone.tokenizer(text, add_special_tokens=False)["input_ids"][:600]
    per_token_ms(monitor, ids, 16)  # warm-up
    r = {"per_token_ms_at_16": per_token_ms(monitor, ids, 16), "per_token_ms_at_512": per_token_ms(monitor, ids, 512)}
    r["ratio_512_to_16"] = r["per_token_ms_at_512"] / r["per_token_ms_at_16"]
    r["unguarded_tokens_per_s"] = generate(policy.model, policy.tokenizer, args.gen_tokens, None)
    r["guarded_tokens_per_s"] = generate(policy.model, policy.tokenizer, args.gen_tokens, monitor)
    r["guarded_over_unguarded"] = r["guarded_tokens_per_s"] / r["unguarded_tokens_per_s"]
    del policy, backbone, mm, monitor
    stack = build_stack(StackOptions(policy="smollm2", mrm="bundled", monitor="bundled", methods=("saffron",)))
    heads_ms(stack, ids, 16)  # warm-up
    r["heads_ms_per_token_at_16"] = heads_ms(stack, ids, 16)
    r["heads_ms_per_token_at_512"] = heads_ms(stack, ids, 512)
    stack.engine.reset_caches()
    r.update(stack_ratios(stack, args.stack_tokens, args.repeats))
    report(args, "streaming monitor overhead (SmolLM2-135M-Instruct size)", r)


if __name__ == "__main__":
    main()
