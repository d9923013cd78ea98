"""Trace Saffron's answer token by token: what the policy preferred, what the MRM scored, what was unseen.

For each benign question it runs ChatSaffron's default search (or the settings given), then replays the
answer through the policy and the MRM in one uncached forward each and prints, per position, the token the
search chose with its policy probability, its MRM reward and whether the MRM ever saw it supervised (``U``),
beside the policy's six likeliest children with theirs. This is how the name loops were traced to unseen
tokens inheriting a safe score (benchmarks/README.md, "What makes the name loops"). No harmful prompt is read.

    cd benchmarks && OMP_NUM_THREADS=1 ../.venv/bin/python loop_trace.py --ids freshqa-595,freshqa-30 \\
        --out results/loop_trace.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from _common import prompts_by_id

from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.engine import SearchEngine
from saffron_runtime.stack import StackOptions, build_stack


def trace(engine: SearchEngine, prompt: str, cfg: SearchConfig, top: int = 6) -> dict[str, Any]:
    """The search's answer to ``prompt`` and, per position, the chosen token beside the policy's top children."""
    mrm, tok = engine.mrm, engine.policy.tokenizer
    assert mrm is not None and mrm.unseen_mask is not None
    ids = engine.chat_prompt_ids(prompt)
    res = engine.search(ids, cfg, prompt_text=prompt)
    out = list(res.token_ids)
    with torch.no_grad():
        logp = engine.policy.model(torch.tensor([ids + out])).logits[0, len(ids) - 1 : -1]
        logp = logp.float().log_softmax(-1)
        mids = mrm.template.input_ids(mrm.tokenizer, prompt, out)
        rewards = mrm.model(input_ids=torch.tensor([mids])).logits[0, len(mids) - len(out) - 1 : -1].float()
    unseen = mrm.unseen_mask

    def entry(t: int, c: int) -> dict[str, Any]:
        return {"token": tok.decode([c]), "p": round(float(logp[t, c].exp()), 3),
                "reward": round(float(rewards[t, c]), 2), "unseen": bool(unseen[c])}

    steps = []
    for t, chosen in enumerate(out):
        likeliest = logp[t].topk(top).indices.tolist()
        steps.append({"chosen": entry(t, chosen), "policy_top": [entry(t, c) for c in likeliest]})
    return {"text": res.text, "steps": steps}


def _line(t: int, step: dict[str, Any]) -> str:
    def fmt(e: dict[str, Any]) -> str:
        return f"{e['token']!r}:{e['p']:.2f}:{e['reward']:+.1f}{'U' if e['unseen'] else ''}"

    return f"{t:3d} chose {fmt(step['chosen']):28} | " + "  ".join(fmt(e) for e in step["policy_top"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=Path, default=Path("../runs/quality/benign.jsonl"))
    ap.add_argument("--ids", required=True, help="comma-separated prompt ids of --prompts")
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=40)
    ap.add_argument("--settings", default="{}", help='JSON of SearchConfig overrides, e.g. \'{"unseen_siblings_cap": true}\'')
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    rows = prompts_by_id(a.prompts, a.ids)
    cfg = SearchConfig(method="saffron", budget=a.budget, max_new_tokens=a.max_new_tokens, max_commit_lag=None,
                       **json.loads(a.settings))
    engine = build_stack(StackOptions(policy="smollm2", mrm="bundled", monitor=None, methods=("saffron",))).engine
    report = {"settings": json.loads(a.settings), "budget": a.budget, "traces": {}}
    for pid in rows:
        report["traces"][pid] = result = trace(engine, rows[pid], cfg)
        print(f"== {pid}: {result['text']!r}")
        for t, step in enumerate(result["steps"]):
            print(_line(t, step))
    if a.out:
        a.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
