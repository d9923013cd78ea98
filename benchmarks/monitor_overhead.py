"""Streaming monitor overhead: per-token cost at position 16 vs 512, and SmolLM2 generation
with and without the monitor watching, in one run. The monitor is the size of SmolLM2 (SmolLM2's own
backbone with random heads: the cost does not depend on the heads' training).

    python benchmarks/monitor_overhead.py [--json] [--gen-tokens 64]
"""

from __future__ import annotations

import time

import torch
from _common import parser, report, setup

from saffron_runtime.models import load_policy
from saffron_runtime.models.kv import kv_kwargs, returned_kv
from saffron_runtime.monitor import MonitorRule, SCMMonitor, SCMMonitorModel

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


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--gen-tokens", type=int, default=64)
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
    report(args, "streaming monitor overhead (SmolLM2-135M-Instruct size)", r)


if __name__ == "__main__":
    main()
