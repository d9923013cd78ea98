"""The benign prompts of the quality report, from the test split only: the XSTest safe test prompts and
100 FreshQA test questions (the first by sha256 of their id, so the choice is fixed and blind to content).

    ../.venv/bin/python quality_set.py --splits ../runs/data --out ../runs/quality/benign.jsonl
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--splits", type=Path, default=Path("../runs/data"))
    ap.add_argument("--out", type=Path, default=Path("../runs/quality/benign.jsonl"))
    ap.add_argument("--freshqa", type=int, default=100)
    a = ap.parse_args()
    rows = [json.loads(x) for x in (a.splits / "prompts_test.jsonl").open() if x.strip()]
    xstest = [r for r in rows if r["source"] == "xstest" and r["label"] == 0]
    fresh = sorted(
        (r for r in rows if r["source"] == "freshqa" and r["label"] == 0),
        key=lambda r: hashlib.sha256(r["id"].encode()).hexdigest(),
    )[: a.freshqa]
    # interleave so that --limit N keeps both sources
    mixed, i, j = [], 0, 0
    while i < len(xstest) or j < len(fresh):
        if i < len(xstest):
            mixed.append(xstest[i])
            i += 1
        for _ in range(3):
            if j < len(fresh):
                mixed.append(fresh[j])
                j += 1
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with a.out.open("w") as f:
        for r in mixed:
            f.write(json.dumps({"id": r["id"], "prompt": r["prompt"]}) + "\n")
    print(f"{len(xstest)} XSTest safe + {len(fresh)} FreshQA prompts -> {a.out}")


if __name__ == "__main__":
    main()
