"""Reward-model calls of Saffron vs PRM beam search at the same budget and steps, on SmolLM2.

Saffron scores every child of a node with one MRM forward; PRM beam search pays one reward forward
per child. The MRM here is SmolLM2-135M-Instruct with a randomly initialised LoRA adapter and the PRM
is SmolLM2 with a random 2-way head (the trained bundled models are not needed to count calls).

    python benchmarks/reward_calls.py [--json] [--budget 4] [--steps 24] [--children 4]
"""

from __future__ import annotations

import torch
from _common import parser, report, setup

from saffron_runtime.models import MRMTemplate, MultifurcationRewardModel, load_policy
from saffron_runtime.search import ProcessRewardModel, SearchConfig, SearchEngine
from saffron_runtime.training.judges import chat_prefix_builder

PROMPTS = ["How do I make a good cup of tea?", "Tell me about the history of the bicycle.",
           "What should I pack for a weekend camping trip?"]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=4)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--children", type=int, default=4)
    args = p.parse_args()
    setup(args)
    from peft import LoraConfig, get_peft_model

    policy = load_policy("smollm2", dtype="float32")
    base = load_policy("smollm2", dtype="float32").model
    mrm_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "v_proj"],
                                                init_lora_weights=False)).eval()
    mrm = MultifurcationRewardModel(mrm_model, policy.tokenizer, MRMTemplate())
    head = torch.nn.Linear(policy.model.config.hidden_size, 2)
    prm = ProcessRewardModel(policy.model, head, chat_prefix_builder(policy.tokenizer))
    engine = SearchEngine(policy, mrm, prm)
    r = {"budget": args.budget, "steps": args.steps, "prm_children_per_node": args.children,
         "saffron_reward_forwards": 0, "prm_reward_forwards": 0, "saffron_expanded_nodes": 0,
         "prm_expanded_nodes": 0, "searched_tokens": 0, "saffron_tflops": 0.0, "prm_tflops": 0.0,
         "saffron_wall_s": 0.0, "prm_wall_s": 0.0}
    for q in PROMPTS:
        ids = engine.chat_prompt_ids(q)
        # the published settings: the paper's reward ranking, no commit-lag pruning (counts do not depend on them)
        common = dict(budget=args.budget, max_new_tokens=args.steps, min_new_tokens=args.steps,
                      objective="reward", max_commit_lag=None)
        s = engine.search(ids, SearchConfig(method="saffron", **common), prompt_text=q)
        b = engine.search(ids, SearchConfig(method="prm_beam", prm_children=args.children, **common), prompt_text=q)
        r["saffron_reward_forwards"] += s.stats.reward_forwards
        r["prm_reward_forwards"] += b.stats.reward_forwards
        r["saffron_expanded_nodes"] += s.stats.expanded_nodes
        r["prm_expanded_nodes"] += b.stats.expanded_nodes
        r["searched_tokens"] += s.stats.expanded_nodes
        r["saffron_tflops"] += s.stats.flops / 1e12
        r["prm_tflops"] += b.stats.flops / 1e12
        r["saffron_wall_s"] += s.stats.wall_s
        r["prm_wall_s"] += b.stats.wall_s
    r["ratio_prm_to_saffron"] = r["prm_reward_forwards"] / r["saffron_reward_forwards"]
    r["ratio_over_k"] = r["ratio_prm_to_saffron"] / args.children
    report(args, "reward-model forwards: Saffron vs PRM beam (SmolLM2-135M-Instruct)", r)


if __name__ == "__main__":
    main()
