"""Which of Saffron's exploration settings makes its name loops on benign questions.

ChatSaffron's default (unseen tokens take the parent's reward, ``safe_threshold`` 2) sometimes loops on a
name in FreshQA answers ("Max Temperature Max Max Max ..."). This runs Saffron on chosen benign questions
under each combination of ``unseen_from_parent`` and ``safe_threshold`` and prints the answers and their
repetition, so the setting behind the loops can be read off. No harmful prompt is read.

    cd benchmarks && OMP_NUM_THREADS=2 ../.venv/bin/python threshold_loops.py \
        --ids freshqa-365,freshqa-595 --out results/threshold_loops.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console
from rich.table import Table

from saffron_runtime.evaluation.quality import longest_word_run, repeated_trigram_share
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.stack import StackOptions, build_stack

SETTINGS: tuple[tuple[bool, float], ...] = (
    (True, 2.0),
    (True, 1.0),
    (True, 0.0),
    (False, 2.0),
    (False, 0.0),
)
"""(unseen_from_parent, safe_threshold) pairs; the first is ChatSaffron's default."""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=Path, default=Path("../runs/quality/benign.jsonl"))
    ap.add_argument("--ids", required=True, help="comma-separated prompt ids of --prompts")
    ap.add_argument("--budget", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rows = {r["id"]: r["prompt"] for r in map(json.loads, a.prompts.read_text().splitlines())}
    missing = [i for i in a.ids.split(",") if i not in rows]
    if missing:
        raise SystemExit(
            f"--ids not in {a.prompts}: {', '.join(missing)} (build it with quality_set.py)"
        )
    engine = build_stack(
        StackOptions(policy="smollm2", mrm="bundled", monitor=None, methods=("saffron",))
    ).engine
    results = []
    for pid in a.ids.split(","):
        ids = engine.chat_prompt_ids(rows[pid])
        for parent, threshold in SETTINGS:
            cfg = SearchConfig(
                method="saffron",
                budget=a.budget,
                max_new_tokens=a.max_new_tokens,
                max_commit_lag=None,
                unseen_from_parent=parent,
                safe_threshold=threshold,
            )
            text = engine.search(ids, cfg, prompt_text=rows[pid]).text
            results.append(
                {
                    "id": pid,
                    "unseen_from_parent": parent,
                    "safe_threshold": threshold,
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
        "unseen tokens",
        "safe_threshold",
        "3-gram repeats",
        "word run",
        "output",
    ):
        table.add_column(col, overflow="fold")
    for r in results:
        table.add_row(
            r["id"],
            "parent's reward" if r["unseen_from_parent"] else "unsafe",
            f"{r['safe_threshold']:g}",
            f"{r['repeated_trigram_share']:.2f}",
            str(r["longest_word_run"]),
            r["output"][:120],
        )
    Console().print(table)
    a.out.write_text(
        json.dumps(
            {"budget": a.budget, "max_new_tokens": a.max_new_tokens, "rows": results}, indent=1
        )
    )


if __name__ == "__main__":
    main()
