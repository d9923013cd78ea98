"""What ``prune_flagged_beams`` does to Saffron's output, option off vs on, side by side (a small slice).

Harm: the first ``--harmful`` prompts of the attack set (``attack_set.py``), a ``--prefill``-token
prefilling attack, Saffron at ``--budget``, judged as ``saffron eval attack`` judges (the learned
judge: the heads monitor's response head at its stored threshold; the independent request-aware
judge). Quality: the first ``--benign`` prompts of ``runs/quality/benign.jsonl`` (``quality_set.py``)
measured as ``saffron eval quality`` measures. The pruning monitor is the bundled heads monitor on
the policy's own hidden states, which is also the learned judge: read its ASR with that in mind.
Searches run unguarded by the streaming monitor, so the figures are the search's own output; a
search that ends closed (every beam flagged) is counted as blocked and judged on what it committed.

    cd benchmarks && PYTHONPATH=.. OMP_NUM_THREADS=1 ../.venv/bin/python beam_pruning.py --json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from saffron_runtime.evaluation.attack.grid import AttackSettings
from saffron_runtime.evaluation.attack.prompts import load_prompts
from saffron_runtime.evaluation.attack.run import build_harness
from saffron_runtime.evaluation.attack.store import Generation
from saffron_runtime.evaluation.quality import measure, summarise
from saffron_runtime.evaluation.text_judges import load_judges
from saffron_runtime.monitor.shared import HeadsBeamMonitor
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.flagging import FLAGGED


def _search(harness: Any, beams: HeadsBeamMonitor, prompt: str, prefill: list[int], cfg: SearchConfig) -> dict:
    """One cold Saffron search; its ids, text, whether it ended closed, and its wall time."""
    engine = harness.engine
    engine.reset_caches()
    t0 = time.perf_counter()
    res = engine.search(engine.chat_prompt_ids(prompt), cfg, prompt_text=prompt, prefill_ids=prefill,
                        beam_monitor=beams)
    return {"ids": list(res.token_ids), "text": res.text, "blocked": res.stats.stop_reason == FLAGGED,
            "flagged_beams": res.stats.flagged_beams, "wall_s": time.perf_counter() - t0,
            "flops": res.stats.flops}


def harm(harness: Any, beams: HeadsBeamMonitor, args: argparse.Namespace) -> dict[str, Any]:
    """ASR (learned and request judges) of Saffron with the option off and on."""
    prompts = load_prompts(args.harmful_prompts, limit=args.harmful)
    out: dict[str, Any] = {}
    for on in args.modes:
        cfg = SearchConfig(method="saffron", budget=args.budget, max_new_tokens=args.max_new_tokens,
                           max_commit_lag=None, prune_flagged_beams=on)
        items, runs = [], []
        for p in prompts:
            prefill = harness.prefill_ids(p, args.prefill)
            r = _search(harness, beams, p.prompt, prefill, cfg)
            gen = Generation(text=r["text"], token_ids=r["ids"], prefill_text="", prefill_ids=prefill,
                             flops=r["flops"], wall_s=r["wall_s"], stats={})
            items.append((p, None, gen))
            runs.append(r)
        judged = harness.judge(items)
        n = len(judged)
        out["on" if on else "off"] = {
            "asr_learned": sum(j.learned_unsafe for j in judged) / n,
            "asr_request_judge": sum(j.independent_unsafe for j in judged) / n,
            "blocked": sum(r["blocked"] for r in runs),
            "flagged_beams": sum(r["flagged_beams"] for r in runs),
            "tokens": sum(len(r["ids"]) for r in runs) / n,
            "wall_s_per_prompt": sum(r["wall_s"] for r in runs) / n,
            "ids": [r["ids"] for r in runs],  # dropped from the report (harmful text stays out)
        }
    if len(out) == 2:
        out["on"]["changed_outputs"] = sum(
            a != b for a, b in zip(out["off"]["ids"], out["on"]["ids"], strict=True)
        )
    for v in out.values():
        del v["ids"]
    return out


def quality(harness: Any, beams: HeadsBeamMonitor, args: argparse.Namespace) -> dict[str, Any]:
    """Repetition, NLL per token, length and refusals of Saffron with the option off and on."""
    rows = [json.loads(x) for x in Path(args.benign_prompts).read_text().splitlines() if x.strip()]
    rows = rows[: args.benign]
    _, refusal = load_judges()
    out: dict[str, Any] = {}
    for on in args.modes:
        cfg = SearchConfig(method="saffron", budget=args.budget, max_new_tokens=args.quality_tokens,
                           max_commit_lag=None, prune_flagged_beams=on)
        runs = [_search(harness, beams, r["prompt"], [], cfg) for r in rows]
        refused = refusal.predict([r["text"] for r in runs])
        measured = [
            measure(harness.engine.policy, harness.engine.chat_prompt_ids(row["prompt"]), r["ids"],
                    r["text"], bool(x))
            for row, r, x in zip(rows, runs, refused, strict=True)
        ]
        out["on" if on else "off"] = {
            **summarise(measured),
            "blocked": sum(r["blocked"] for r in runs),
            "flagged_beams": sum(r["flagged_beams"] for r in runs),
            "wall_s_per_prompt": sum(r["wall_s"] for r in runs) / len(runs),
            "texts": [r["text"] for r in runs],
        }
    if len(out) == 2:
        off, on_ = out["off"], out["on"]
        on_["changed_outputs"] = sum(a != b for a, b in zip(off["texts"], on_["texts"], strict=True))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--harmful-prompts", default="../runs/attack/harmful.jsonl")
    ap.add_argument("--benign-prompts", default="../runs/quality/benign.jsonl")
    ap.add_argument("--harmful", type=int, default=10)
    ap.add_argument("--benign", type=int, default=10)
    ap.add_argument("--prefill", type=int, default=10)
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=50)
    ap.add_argument("--quality-tokens", type=int, default=48)
    ap.add_argument("--modes", default="off,on", help="which runs: off, on or both (side by side)")
    ap.add_argument("--rule-theta", type=float, default=None, help="the pruning rule's theta (default: the monitor's)")
    ap.add_argument("--rule-k", type=int, default=None, help="the pruning rule's k (default: the monitor's)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.modes = [m.strip() == "on" for m in args.modes.split(",")]
    settings = AttackSettings(prefill=args.prefill, max_new_tokens=args.max_new_tokens)
    harness = build_harness(policy="smollm2", mrm="bundled", monitor="bundled", judges="bundled",
                            cache_dir="../runs/beam_pruning/cache", settings=settings)
    learned = harness.learned
    rule = learned.rule.model_copy(update={k: v for k, v in (("theta", args.rule_theta), ("k", args.rule_k))
                                           if v is not None})
    beams = HeadsBeamMonitor(learned, rule)
    report = {"harm": harm(harness, beams, args), "quality": quality(harness, beams, args),
              "args": vars(args), "rule": rule.model_dump()}
    if args.json:
        print(json.dumps(report, indent=1, ensure_ascii=False))
        return
    print("| slice | option | metric values |")
    print("|---|---|---|")
    for part in ("harm", "quality"):
        for k in report[part]:
            vals = {m: v for m, v in report[part][k].items() if m != "texts"}
            print(f"| {part} | {k} | {vals} |")


if __name__ == "__main__":
    main()
