"""Markdown tables of a `saffron eval attack --json` result (for the README), with the matched comparison.

../.venv/bin/python attack_table.py results/attack_smollm2.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> None:
    doc = json.loads(Path(sys.argv[1]).read_text())
    cfg = doc["config"]
    print(
        f"{cfg['n_prompts']} harmful prompts, {cfg['n_benign']} benign, prefill {cfg['prefill']}, "
        f"{cfg['max_new_tokens']} new tokens; generation wall time "
        f"{cfg.get('generation_wall_s', float('nan')) / 3600:.2f} h summed over one-thread workers\n"
    )
    print(
        "| method | budget / N | ASR learned | ASR independent | ASR strings | TFLOPs / prompt | s / prompt |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in doc["results"]:
        print(
            f"| {r['method']} | {r['budget']} | {r['asr_learned']:.2f} | {r['asr_independent']:.2f} | "
            f"{r['asr_strings']:.2f} | {r['tflops_per_prompt']:.3f} | {r.get('wall_s_per_prompt', float('nan')):.1f} |"
        )
    rows = doc["over_refusal"]["results"]
    if rows:
        print(
            f"\nOver-refusal on {cfg['n_benign']} benign prompts (judge: {doc['over_refusal']['judge']})\n"
        )
        print("| method | budget / N | refused | refused (strings) | vs unguarded |")
        print("|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['method']} | {r['budget']} | {r['refusal_rate']:.2f} | "
                f"{r['refusal_rate_strings']:.2f} | {r['delta_vs_unguarded']:+.2f} |"
            )
    m = doc.get("matched")
    if m and m.get("best_of_n"):
        s, b = m["saffron"], m["best_of_n"]
        print(
            f"\nMatched compute: Saffron@{s['budget']} ({s['tflops_per_prompt']:.3f} TFLOPs) vs "
            f"Best-of-{b['budget']} ({b['tflops_per_prompt']:.3f} TFLOPs): ASR learned "
            f"{s['asr_learned']:.2f} vs {b['asr_learned']:.2f}, independent {s['asr_independent']:.2f} vs "
            f"{b['asr_independent']:.2f}, strings {s['asr_strings']:.2f} vs {b['asr_strings']:.2f}"
        )
        paired = m.get("paired") or {}
        for judge in ("learned", "independent", "strings"):
            if judge in paired:
                d = paired[judge]
                print(
                    f"  {judge}: Saffron - Best-of-N = {d['difference']:+.2f} "
                    f"(paired bootstrap 95% CI {d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}, "
                    f"{paired['n']} prompts)"
                )
    v = doc.get("vs_prm_beam")
    if v:
        ratio = v.get("reward_tflops_ratio")
        print(
            f"\nSaffron@{v['budget']} vs PRM beam@{v['budget']}: reward-model TFLOPs ratio "
            f"{'n/a' if ratio is None else f'{ratio:.2f}'}"
        )
        for judge in ("learned", "independent", "strings"):
            d = v["paired"].get(judge)
            if d:
                print(
                    f"  {judge}: Saffron - PRM beam = {d['difference']:+.2f} (paired bootstrap 95% CI "
                    f"{d['ci95'][0]:+.2f} to {d['ci95'][1]:+.2f}, {v['paired']['n']} prompts)"
                )
    outs = [o for o in doc["outputs"] if "independent_unsafe" in o]
    if outs:
        print("\nJudge agreement on the attacked outputs (share of outputs where both call it the same)\n")
        print("| method | budget / N | learned = independent | learned = strings | independent = strings |")
        print("|---|---|---|---|---|")
        for r in doc["results"]:
            os_ = [o for o in outs if (o["method"], o["budget"]) == (r["method"], r["budget"])]
            agree = [
                sum(o[a] == o[b] for o in os_) / len(os_)
                for a, b in (
                    ("learned_unsafe", "independent_unsafe"),
                    ("learned_unsafe", "strings_unsafe"),
                    ("independent_unsafe", "strings_unsafe"),
                )
            ]
            print(f"| {r['method']} | {r['budget']} | " + " | ".join(f"{a:.2f}" for a in agree) + " |")
    j = doc["judges"]
    print(
        f"\nJudges: learned = {j['learned']['rule']}; independent = {j['independent']['name']} "
        f"(held-out accuracy {j['independent']['held_out_accuracy']:.3f}); refusal = {j['refusal']['name']} "
        f"(PyRIT refusal accuracy {_fmt(j['refusal']['pyrit_refusal_accuracy'])}); strings on PyRIT refusal "
        f"{_fmt(j['strings']['pyrit_refusal_accuracy'])}"
    )


def _fmt(x: float | None) -> str:
    """Three decimals, or "n/a" where the data to measure it was missing."""
    return "n/a" if x is None else f"{x:.3f}"


if __name__ == "__main__":
    main()
