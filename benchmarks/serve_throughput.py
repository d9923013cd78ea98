"""Serving throughput: `saffron serve` on an embedded Ray Serve (127.0.0.1 only), side by side in one run.

1. One replica: aggregate completion tokens/s and time to the first cleared token at 1, 4 and 8
   concurrent streaming clients, for Saffron (budget 4) and greedy, the rounds interleaved so the
   shared machine's noise hits both alike. Every answer is exactly ``--max-tokens`` long
   (``min_new_tokens`` = ``max_tokens``), so tokens/s compares equal work.
2. Two replicas: the share of prompt tokens served from a trie (``stats.cache_hits`` /
   ``usage.prompt_tokens``) over a chat workload (``--users`` users, ``--turns`` turns each, every
   turn resending the history), prefix-aware routing against random, each on fresh replicas.
   Every client sends the chat's prefix key (``x-session-id``), as ChatSaffron(base_url=...) does;
   only the router differs.

    PYTHONPATH=.. python serve_throughput.py [--json] [--policy smollm2] [--max-tokens 16]

Answers the monitor blocks end with their cleared prefix (``on_violation="truncate"``); their tokens
are not counted (a conservative tokens/s) and the table says how many there were.
Bounded: a fixed number of requests, an HTTP timeout on each, and a start limit for Serve.
"""

from __future__ import annotations

import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from _common import machine, parser

from saffron_runtime.serve.protocol import ROUTING_HEADER, prefix_key

PROMPTS = [
    "Write a short, friendly note about a lighthouse keeper.",
    "How do I bake a loaf of bread at home?",
    "Name three rivers in Europe and say one thing about each.",
    "Explain what a compiler does, in two sentences.",
    "Give me one tip for learning the guitar.",
    "What is a good name for a grey cat?",
    "Describe the moon in one line.",
    "How do plants drink water?",
    "Suggest a weekend hobby for a busy person.",
    "Why is the sea salty?",
    "What should I pack for a day hike?",
    "Tell me a fun fact about owls.",
    "How can I sleep better at night?",
    "What makes a good cup of tea?",
    "Explain rain to a child.",
    "Name a board game for four players.",
]
FOLLOW_UPS = ["Tell me more.", "Can you give an example?", "Say it shorter.", "Why is that?",
              "Thanks, one last tip?"]
RESULTS = Path(__file__).parent / "results" / "serve_throughput.json"
REQUEST_TIMEOUT_S = 600.0


def stream_chat(url: str, messages: list[dict[str, str]], extra: dict[str, Any]) -> dict[str, Any]:
    """One streaming request: its text, usage, saffron field and time to the first cleared token."""
    body = {"model": "saffron", "messages": messages, "stream": True, "on_violation": "truncate",
            **extra}  # a blocked answer ends with its cleared prefix (counted as blocked)
    headers = {ROUTING_HEADER: prefix_key(messages)}
    t0 = time.perf_counter()
    first: float | None = None
    text, last = [], {}
    with httpx.Client(timeout=REQUEST_TIMEOUT_S) as client, client.stream(
            "POST", url, json=body, headers=headers) as r:
        if r.status_code != 200:
            r.read()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            piece = event["choices"][0]["delta"].get("content") or ""
            if piece and first is None:
                first = time.perf_counter() - t0
            text.append(piece)
            last = event
    return {"text": "".join(text), "usage": last.get("usage", {}), "saffron": last.get("saffron", {}),
            "ttft_s": first, "wall_s": time.perf_counter() - t0}


def _threads(fns: list[Any]) -> None:
    errors: list[BaseException] = []

    def guard(fn: Any) -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - reported after the join
            errors.append(e)

    threads = [threading.Thread(target=guard, args=(fn,)) for fn in fns]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=REQUEST_TIMEOUT_S * 4)
    if errors:
        raise errors[0]


def concurrency_round(url: str, clients: int, per_client: int, extra: dict[str, Any],
                      offset: int) -> dict[str, Any]:
    """``clients`` threads, each streaming ``per_client`` requests one after another (distinct prompts)."""
    done: list[dict[str, Any]] = []

    def client(i: int) -> None:
        for k in range(per_client):
            prompt = PROMPTS[(offset + i * per_client + k) % len(PROMPTS)]
            done.append(stream_chat(url, [{"role": "user", "content": prompt}], extra))

    t0 = time.perf_counter()
    _threads([lambda i=i: client(i) for i in range(clients)])
    wall = time.perf_counter() - t0
    tokens = sum(int(d["usage"].get("completion_tokens", 0)) for d in done
                 if not d["saffron"].get("blocked"))
    ttfts = [d["ttft_s"] for d in done if d["ttft_s"] is not None]
    blocked = sum(1 for d in done if d["saffron"].get("blocked"))
    print(f"  {extra.get('method')} x{clients}: {tokens / wall:.2f} tokens/s", file=sys.stderr)
    return {"clients": clients, "requests": len(done), "blocked": blocked, "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "ttft_median_s": statistics.median(ttfts) if ttfts else None,
            "ttft_max_s": max(ttfts) if ttfts else None}


def chat_workload(url: str, users: int, turns: int, extra: dict[str, Any]) -> dict[str, Any]:
    """``users`` concurrent chats of ``turns`` turns; each turn resends the whole history."""
    per_turn: list[list[tuple[int, int]]] = [[] for _ in range(turns)]

    def user(u: int) -> None:
        messages = [{"role": "user", "content": PROMPTS[u % len(PROMPTS)]}]
        for t in range(turns):
            out = stream_chat(url, messages, extra)
            hits = int(out["saffron"].get("stats", {}).get("cache_hits", 0))
            per_turn[t].append((hits, int(out["usage"].get("prompt_tokens", 0))))
            messages = messages + [{"role": "assistant", "content": out["text"]},
                                   {"role": "user", "content": FOLLOW_UPS[t % len(FOLLOW_UPS)]}]

    t0 = time.perf_counter()
    _threads([lambda u=u: user(u) for u in range(users)])
    hits = sum(h for turn in per_turn for h, _ in turn)
    prompt = sum(p for turn in per_turn for _, p in turn)
    later_h = sum(h for turn in per_turn[1:] for h, _ in turn)
    later_p = sum(p for turn in per_turn[1:] for _, p in turn)
    print(f"  chat: hit share {hits / prompt:.3f}", file=sys.stderr)
    return {"requests": users * turns, "prompt_tokens": prompt, "cache_hits": hits,
            "hit_share": hits / prompt, "hit_share_turns_2_on": later_h / later_p if later_p else None,
            "wall_s": time.perf_counter() - t0}


def deploy(args: Any, replicas: int, routing: str, num_cpus: float) -> str:
    """(Re)deploy the app on fresh replicas and return the chat completions URL."""
    from ray import serve

    from saffron_runtime.serve.deployment import APP_NAME, ClusterOptions, start
    from saffron_runtime.serve.service import ServiceOptions

    if serve.status().applications.get(APP_NAME) is not None:
        serve.shutdown()  # a fresh proxy too: it keeps a deployment's router across redeploys
    service = ServiceOptions(policy=args.policy, search={"max_new_tokens": args.max_tokens,
                                                         "budget": args.budget},
                             queue_limit=args.queue_limit, max_batch=args.max_batch)
    start(service, ClusterOptions(port=args.port, ray_cpus=args.ray_cpus, replicas=replicas,
                                  num_cpus=num_cpus, routing=routing))
    url = f"http://127.0.0.1:{args.port}/v1/chat/completions"
    stream_chat(url, [{"role": "user", "content": "hello"}], {"max_tokens": 2})  # the app answers
    return url


def throughput(args: Any) -> dict[str, Any]:
    url = deploy(args, 1, "prefix", float(args.ray_cpus))
    methods = {"saffron": {"method": "saffron", "budget": args.budget},
               "greedy": {"method": "greedy"}}
    # warm-up, not recorded: a single-client round per method (in the first minutes after it
    # starts, Ray's own processes share the cores, which slowed the first measured round 3-5x)
    for fields in methods.values():
        extra = {**fields, "max_tokens": args.max_tokens, "min_new_tokens": args.max_tokens}
        concurrency_round(url, 1, args.per_client, extra, offset=len(PROMPTS) // 2)
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in range(args.rounds):  # up then down the levels, so drift in the machine's load cancels
        for n, clients in enumerate(args.clients if r % 2 == 0 else args.clients[::-1]):
            for name, fields in methods.items():  # interleaved: saffron then greedy at each level
                extra = {**fields, "max_tokens": args.max_tokens, "min_new_tokens": args.max_tokens}
                one = concurrency_round(url, clients, args.per_client, extra, offset=n + r)
                runs.setdefault((name, clients), []).append(one)
    out: dict[str, Any] = {}
    for name in methods:
        levels = [_pooled(runs[(name, c)]) for c in args.clients]
        out[name] = [{**lv, "speedup_vs_1": lv["tokens_per_s"] / levels[0]["tokens_per_s"]}
                     for lv in levels]
    return out


def _pooled(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One level over its rounds: tokens over wall time summed, the TTFT figures over all requests."""
    tokens, wall = sum(r["tokens"] for r in rounds), sum(r["wall_s"] for r in rounds)
    return {"clients": rounds[0]["clients"], "requests": sum(r["requests"] for r in rounds),
            "blocked": sum(r["blocked"] for r in rounds), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall,
            "tokens_per_s_by_round": [r["tokens_per_s"] for r in rounds],
            "ttft_median_s": statistics.median(r["ttft_median_s"] for r in rounds),
            "ttft_max_s": max(r["ttft_max_s"] for r in rounds)}


def routing(args: Any) -> dict[str, Any]:
    extra = {"method": args.chat_method, "budget": args.budget, "max_tokens": args.max_tokens}
    out = {}
    for mode in ("prefix", "random"):
        url = deploy(args, 2, mode, args.ray_cpus / 2)
        out[mode] = chat_workload(url, args.users, args.turns, extra)
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--policy", default="smollm2", help="policy of the replicas (the bundled stack on SmolLM2)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--per-client", type=int, default=2, help="requests each client sends in turn")
    p.add_argument("--rounds", type=int, default=2, help="passes over the levels (up, down, ...)")
    p.add_argument("--users", type=int, default=8)
    p.add_argument("--turns", type=int, default=5)
    p.add_argument("--chat-method", default="saffron")
    p.add_argument("--queue-limit", type=int, default=8)
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--skip", choices=["throughput", "routing"], default=None)
    p.add_argument("--out", type=Path, default=RESULTS, help="where --json writes the object")
    args = p.parse_args()
    from saffron_runtime.serve.deployment import shutdown

    results: dict[str, Any] = {"policy": args.policy, "max_tokens": args.max_tokens,
                               "budget": args.budget, "max_batch": args.max_batch}
    try:
        if args.skip != "throughput":
            results["throughput"] = throughput(args)
        if args.skip != "routing":
            results["routing"] = routing(args)
    finally:
        shutdown()
    results["machine"] = machine()
    if args.json:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
        return
    print_tables(results)


def print_tables(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if "throughput" in results:
        t = Table(title=f"one replica, {results['policy']}, {results['max_tokens']} tokens per answer")
        for col in ("method", "clients", "requests", "blocked", "tokens/s", "x vs 1 client",
                    "TTFT median s", "TTFT max s"):
            t.add_column(col, justify="right")
        for name, levels in results["throughput"].items():
            for lv in levels:
                t.add_row(name, str(lv["clients"]), str(lv["requests"]), str(lv["blocked"]),
                          f"{lv['tokens_per_s']:.2f}",
                          f"{lv['speedup_vs_1']:.2f}", f"{lv['ttft_median_s']:.2f}",
                          f"{lv['ttft_max_s']:.2f}")
        console.print(t)
    if "routing" in results:
        t = Table(title="two replicas, chat workload: prompt tokens served from a trie")
        for col in ("routing", "requests", "prompt tokens", "cache hits", "hit share",
                    "hit share, turns 2+"):
            t.add_column(col, justify="right")
        for mode, r in results["routing"].items():
            t.add_row(mode, str(r["requests"]), str(r["prompt_tokens"]), str(r["cache_hits"]),
                      f"{r['hit_share']:.3f}", f"{r['hit_share_turns_2_on']:.3f}")
        console.print(t)


if __name__ == "__main__":
    main()
