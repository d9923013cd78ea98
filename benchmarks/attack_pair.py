"""Paired ASR difference of one method between two attack reports on the same prompts, per budget.

For a changed default: the report before (from git history) against the report after, the same
paired bootstrap as the report's own comparisons (``stats.paired_difference``, prompts resampled).

    git show b9be4a7:benchmarks/results/attack_smollm2.json > /tmp/attack_before.json
    ../.venv/bin/python attack_pair.py /tmp/attack_before.json results/attack_smollm2.json --method saffron
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from saffron_runtime.evaluation.attack.grid import MethodSpec
from saffron_runtime.evaluation.attack.stats import paired_difference


def _judged(path: Path, tag: str, method: str) -> list[Any]:
    """The report's verdicts for ``method``, each under a spec tagged by its report."""
    rows = json.loads(path.read_text(encoding="utf-8"))["outputs"]
    return [
        SimpleNamespace(spec=MethodSpec(tag, r["budget"]), prompt_id=r["prompt_id"], **{
            k: r[k] for k in ("learned_unsafe", "independent_unsafe", "strings_unsafe")
        })
        for r in rows if r["method"] == method
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path)
    ap.add_argument("--method", default="saffron")
    a = ap.parse_args()
    judged = _judged(a.before, "before", a.method) + _judged(a.after, "after", a.method)
    print("| budget | prompts | judge | after - before | 95% CI |\n|---|---|---|---|---|")
    for budget in sorted({j.spec.budget for j in judged}):
        d = paired_difference(judged, MethodSpec("after", budget), MethodSpec("before", budget))  # type: ignore[arg-type]
        for judge in ("independent", "learned"):
            lo, hi = d[judge]["ci95"]
            print(f"| {budget} | {d['n']} | {judge} | {d[judge]['difference']:+.2f} | {lo:+.2f} to {hi:+.2f} |")


if __name__ == "__main__":
    main()
