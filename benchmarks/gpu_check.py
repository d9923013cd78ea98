"""GPU check: the tiny and SmolLM2 search (every method), the streaming monitor and ChatSaffron on CUDA.

Prints tokens/s per path (a table, or one JSON object with ``--json``) and whether tiny-model greedy
decoding on the GPU gives the CPU's tokens. On a machine without CUDA it says so and exits 0;
``--device cpu`` runs the same paths on the CPU (a dry run of this script, not a GPU check).

    python benchmarks/gpu_check.py [--json] [--device cuda] [--dtype float32|bfloat16] [--tokens 32]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from _common import parser, report, setup

from saffron_runtime.guarded import GuardedGeneration
from saffron_runtime.models import LoadedModel, MRMTemplate, MultifurcationRewardModel
from saffron_runtime.monitor import MonitorRule, SCMMonitor, SCMMonitorModel
from saffron_runtime.search import ProcessRewardModel, SearchConfig, SearchEngine
from saffron_runtime.stack import StackOptions, build_stack
from saffron_runtime.testing import build_tiny_models
from saffron_runtime.training.judges import chat_prefix_builder

PROMPT = "Write a short, friendly note about a lighthouse keeper."
METHODS = ("greedy", "saffron", "best_of_n", "prm_beam")


def _config(method: str, tokens: int) -> SearchConfig:
    return SearchConfig(method=method, max_new_tokens=tokens, budget=4, num_samples=4, temperature=1.0)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _rate(fn: Callable[[], int]) -> float:
    """Tokens per second of ``fn`` (which returns the tokens it produced), synchronised."""
    _sync()
    t0 = time.perf_counter()
    produced = fn()
    _sync()
    return produced / (time.perf_counter() - t0)


def tiny_engine(device: str, dtype: torch.dtype) -> SearchEngine:
    """Tiny random policy, MRM and PRM on ``device``."""
    tiny = build_tiny_models("llama", seed=0)
    policy, backbone = tiny.policy.to(device, dtype), tiny.reward_backbone.to(device, dtype)
    mrm = MultifurcationRewardModel(backbone, tiny.tokenizer, MRMTemplate(prefix="<|im_start|>", separator="\n"))
    head = torch.nn.Linear(backbone.config.hidden_size, 2).to(device, dtype)
    prm = ProcessRewardModel(backbone, head, chat_prefix_builder(tiny.tokenizer))
    return SearchEngine(LoadedModel(policy, tiny.tokenizer, "tiny"), mrm, prm)


def search_rates(engine: SearchEngine, prefix: str, tokens: int) -> dict[str, float]:
    """Tokens/s of each method on ``engine`` (after one warm-up search)."""
    ids = engine.chat_prompt_ids(PROMPT)
    out: dict[str, float] = {}
    for method in METHODS:
        engine.search(ids, _config(method, 2), prompt_text=PROMPT)  # warm-up
        out[f"{prefix}_{method}_tokens_per_s"] = _rate(
            lambda m=method: engine.search(ids, _config(m, tokens), prompt_text=PROMPT).stats.steps
        )
    return out


def monitor_rate(engine: SearchEngine, backbone: Any, prefix: str, tokens: int) -> dict[str, Any]:
    """Guarded greedy tokens/s with a heads monitor on ``backbone`` (shared when it is the policy)."""
    torch.manual_seed(0)
    model = SCMMonitorModel(backbone, engine.policy.tokenizer, rule=MonitorRule(theta=1.0, k=4096))
    model.to(next(backbone.parameters()).device)
    ids = engine.chat_prompt_ids(PROMPT)
    path: list[str | None] = []

    def run() -> int:
        gen = GuardedGeneration(engine, SCMMonitor(model), ids, _config("greedy", tokens), prompt_text=PROMPT)
        for _ in gen:
            pass
        path.append(gen.outcome.monitor_path)
        return gen.outcome.stats.steps if gen.outcome.stats else 0

    return {f"{prefix}_guarded_greedy_tokens_per_s": _rate(run), f"{prefix}_monitor_path": path[-1]}


def chat_rate(device: str, dtype: str, tokens: int) -> dict[str, float]:
    """ChatSaffron (the default stack: SmolLM2, bundled MRM and heads monitor) tokens/s per method."""
    from langchain_saffron import ChatSaffron

    chat = ChatSaffron(device=device, dtype=dtype, max_new_tokens=tokens, budget=4)
    out: dict[str, float] = {}
    for method in ("greedy", "saffron"):
        chat.invoke(PROMPT, method=method, max_tokens=2)  # warm-up

        def run(m: str = method) -> int:
            msg = chat.invoke(PROMPT, method=m)
            return int(msg.response_metadata["saffron"]["stats"]["steps"])

        out[f"chat_smollm2_{method}_tokens_per_s"] = _rate(run)
    return out


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--tokens", type=int, default=32)
    args = p.parse_args()
    setup(args)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        msg = "no CUDA device on this machine: the GPU check was not run"
        if args.json:
            report(args, "GPU check", {"ran": False, "reason": msg})
        else:
            print(msg)
        sys.exit(0)
    dtype = getattr(torch, args.dtype)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu (dry run)"
    r: dict[str, Any] = {"ran": True, "device": name, "dtype": args.dtype}
    engine = tiny_engine(args.device, dtype)
    r.update(search_rates(engine, "tiny", args.tokens))
    r.update(monitor_rate(engine, engine.policy.model, "tiny_shared", args.tokens))
    r.update(monitor_rate(engine, engine.mrm.model, "tiny_separate", args.tokens))  # type: ignore[union-attr]
    cpu = tiny_engine("cpu", torch.float32)
    ids = cpu.chat_prompt_ids(PROMPT)
    on_cpu = cpu.search(ids, _config("greedy", args.tokens)).token_ids
    on_gpu = tiny_engine(args.device, torch.float32).search(ids, _config("greedy", args.tokens)).token_ids
    r["tiny_greedy_gpu_equals_cpu"] = on_cpu == on_gpu
    stack = build_stack(StackOptions(policy="smollm2", mrm="bundled", monitor="bundled", prm="bundled",
                                     methods=METHODS, device=args.device, dtype=args.dtype))
    r.update(search_rates(stack.engine, "smollm2", args.tokens))
    r.update(monitor_rate(stack.engine, stack.engine.policy.model, "smollm2_shared", args.tokens))
    r.update(chat_rate(args.device, args.dtype, args.tokens))
    report(args, f"GPU check ({args.device}, {args.dtype})", r)


if __name__ == "__main__":
    main()
