"""Search speed: Saffron's per-token wall time over greedy decoding's, budgets 4 and 8, side by side.

SmolLM2-135M-Instruct with the bundled MRM (the default ChatSaffron stack, monitor off), the same
prompts for every method, cold tries for each search (``reset_caches``) so no run reuses another's
KV. Runs alternate greedy / Saffron per prompt so the shared machine's noise hits both alike; with
``--repeats N`` each method runs N times per prompt and the fastest run counts.
Also reports where a Saffron step's time goes: the policy and MRM forwards (inside the trie) against
everything else (candidate filters, ranking, bookkeeping).

    python benchmarks/search_speed.py [--json] [--tokens 32] [--prompts 3]
"""

from __future__ import annotations

import time

import torch
from _common import parser, report, setup

from saffron_runtime.search import SearchConfig, SearchEngine
from saffron_runtime.stack import StackOptions, build_stack

PROMPTS = [
    "Write a short, friendly note about a lighthouse keeper.",
    "How do I bake a loaf of bread at home?",
    "Name three rivers in Europe and say one thing about each.",
    "Explain what a compiler does, in two sentences.",
]


class _ForwardTimer:
    """Wraps a model's ``forward``: total seconds spent inside it."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.inner, self.seconds = model, model.forward, 0.0

    def __call__(self, *a, **kw):  # noqa: ANN002, ANN003 - the model's own signature
        t0 = time.perf_counter()
        try:
            return self.inner(*a, **kw)
        finally:
            self.seconds += time.perf_counter() - t0

    def __enter__(self) -> _ForwardTimer:
        self.model.forward = self  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.forward = self.inner  # type: ignore[method-assign]


def per_token_s(engine: SearchEngine, prompt: str, config: SearchConfig) -> tuple[float, float]:
    """(wall seconds per generated token, share of that time spent in model forwards)."""
    engine.reset_caches()
    ids = engine.chat_prompt_ids(prompt)
    models = [engine.policy.model] + ([engine.mrm.model] if config.method == "saffron" and engine.mrm else [])
    timers = [_ForwardTimer(m) for m in models]
    for t in timers:
        t.__enter__()
    try:
        t0 = time.perf_counter()
        result = engine.search(ids, config, prompt_text=prompt)
        wall = time.perf_counter() - t0
    finally:
        for t in timers:
            t.__exit__()
    steps = max(result.stats.steps, 1)
    return wall / steps, sum(t.seconds for t in timers) / wall


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32, help="new tokens per search")
    p.add_argument("--prompts", type=int, default=3, help="how many of the built-in prompts")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per method and prompt; the fastest counts (a shared machine only ever slows a run)")
    args = p.parse_args()
    setup(args)
    stack = build_stack(StackOptions(policy="smollm2", mrm="bundled", monitor=None, methods=("saffron",)))
    engine = stack.engine
    configs = {
        "greedy": SearchConfig(method="greedy", max_new_tokens=args.tokens, min_new_tokens=args.tokens),
        "saffron_b4": SearchConfig(method="saffron", budget=4, max_new_tokens=args.tokens, min_new_tokens=args.tokens),
        "saffron_b8": SearchConfig(method="saffron", budget=8, max_new_tokens=args.tokens, min_new_tokens=args.tokens),
    }
    per_token_s(engine, PROMPTS[0], SearchConfig(method="saffron", budget=4, max_new_tokens=3))  # warm-up
    times: dict[str, list[float]] = {k: [] for k in configs}
    model_share: dict[str, list[float]] = {k: [] for k in configs}
    for prompt in PROMPTS[: args.prompts]:
        best: dict[str, tuple[float, float]] = {}
        for _ in range(args.repeats):  # the methods alternate within each repeat
            for name, cfg in configs.items():
                wall, share = per_token_s(engine, prompt, cfg)
                if name not in best or wall < best[name][0]:
                    best[name] = (wall, share)
        for name, (wall, share) in best.items():  # the least disturbed run of each
            times[name].append(wall)
            model_share[name].append(share)
    r: dict[str, object] = {}
    for name in configs:
        r[f"{name}_ms_per_token"] = 1000 * sum(times[name]) / len(times[name])
        r[f"{name}_model_forward_share"] = sum(model_share[name]) / len(model_share[name])
    r["saffron_over_greedy_b4"] = r["saffron_b4_ms_per_token"] / r["greedy_ms_per_token"]  # type: ignore[operator]
    r["saffron_over_greedy_b8"] = r["saffron_b8_ms_per_token"] / r["greedy_ms_per_token"]  # type: ignore[operator]
    r["tokens"], r["prompts"], r["repeats"] = args.tokens, args.prompts, args.repeats
    report(args, "Saffron vs greedy per-token wall time (SmolLM2-135M-Instruct, bundled MRM)", r)


if __name__ == "__main__":
    main()
