"""Which of Saffron's exploration settings makes its name loops on benign questions.

ChatSaffron's default (unseen tokens take the parent's reward, ``safe_threshold`` 2) sometimes loops on a
name in FreshQA answers ("Max Temperature Max Max Max ..."). This runs Saffron on chosen benign questions
under named variants of its exploration settings (``--variants``: the threshold, the unseen-token rule, the
siblings cap, the unsafe children's log-probability weight) and prints the answers and their repetition, so the
setting behind the loops can be read off. No harmful prompt is read.

    cd benchmarks && OMP_NUM_THREADS=2 ../.venv/bin/python threshold_loops.py \
        --ids freshqa-365,freshqa-595 --out results/threshold_loops.json
    cd benchmarks && OMP_NUM_THREADS=1 ../.venv/bin/python threshold_loops.py --ids <ids> \
        --variants default,siblings-cap,unsafe-logprob-4 --out results/loop_variants.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import prompts_by_id
from rich.console import Console
from rich.table import Table

from saffron_runtime.evaluation.quality import longest_word_run, repeated_trigram_share
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.stack import StackOptions, build_stack

VARIANTS: dict[str, dict[str, object]] = {
    "default": {},
    "threshold-1": {"safe_threshold": 1.0},
    "threshold-0": {"safe_threshold": 0.0},
    "unseen-unsafe": {"unseen_from_parent": False},
    "unseen-unsafe-threshold-0": {"unseen_from_parent": False, "safe_threshold": 0.0},
    "siblings-cap": {"unseen_siblings_cap": True},
    "unsafe-logprob-4": {"unsafe_logprob_weight": 4.0},
    "siblings-cap-unsafe-logprob-4": {"unseen_siblings_cap": True, "unsafe_logprob_weight": 4.0},
    "siblings-cap-unsafe-logprob-10": {"unseen_siblings_cap": True, "unsafe_logprob_weight": 10.0},
    "shrink-0.25-unsafe-logprob-4": {"within_prefix_weight": 0.25, "unsafe_logprob_weight": 4.0},
    "shrink-0.25-threshold-1-unsafe-logprob-4": {
        "within_prefix_weight": 0.25, "safe_threshold": 1.0, "unsafe_logprob_weight": 4.0
    },
    "shrink-0-unsafe-logprob-4": {"within_prefix_weight": 0.0, "unsafe_logprob_weight": 4.0},
}
"""Named settings of Saffron's exploration, each what it changes from ChatSaffron's default search."""
DEFAULT_VARIANTS = "default,threshold-1,threshold-0,unseen-unsafe,unseen-unsafe-threshold-0"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=Path, default=Path("../runs/quality/benign.jsonl"))
    ap.add_argument("--ids", required=True, help="comma-separated prompt ids of --prompts")
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--mrm", default="bundled", help="the MRM folder Saffron reads (default: the bundled one)")
    ap.add_argument(
        "--variants",
        default=DEFAULT_VARIANTS,
        help=f"comma-separated names of VARIANTS: {', '.join(VARIANTS)}",
    )
    a = ap.parse_args()
    names = a.variants.split(",")
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"--variants: unknown {unknown}; choose from {list(VARIANTS)}")
    rows = prompts_by_id(a.prompts, a.ids)
    engine = build_stack(
        StackOptions(policy="smollm2", mrm=a.mrm, monitor=None, methods=("saffron",))
    ).engine
    results = []
    for pid in rows:
        ids = engine.chat_prompt_ids(rows[pid])
        for name in names:
            cfg = SearchConfig(
                method="saffron",
                budget=a.budget,
                max_new_tokens=a.max_new_tokens,
                max_commit_lag=None,
                **VARIANTS[name],  # type: ignore[arg-type]
            )
            text = engine.search(ids, cfg, prompt_text=rows[pid]).text
            results.append(
                {
                    "id": pid,
                    "variant": name,
                    "unseen_from_parent": cfg.unseen_from_parent,
                    "safe_threshold": cfg.safe_threshold,
                    "changes": VARIANTS[name],
                    "repeated_trigram_share": repeated_trigram_share(text),
                    "longest_word_run": longest_word_run(text),
                    "output": text,
                }
            )
    table = Table(
        title=f"Saffron budget {a.budget}, {a.max_new_tokens} tokens: exploration settings"
    )
    for col in (
        "prompt",
        "variant",
        "3-gram repeats",
        "word run",
        "output",
    ):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(
            r["id"],
            r["variant"],
            f"{r['repeated_trigram_share']:.2f}",
            str(r["longest_word_run"]),
            r["output"][:120],
        )
    Console().print(table)
    a.out.write_text(
        json.dumps(
            {"mrm": a.mrm, "budget": a.budget, "max_new_tokens": a.max_new_tokens, "rows": results},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
