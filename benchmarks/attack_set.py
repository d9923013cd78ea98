"""The fixed prompt subset of the published attack evaluation, from the test split only.

50 AdvBench + 50 Do-Not-Answer test prompts (the first by sha256 of their id, so the choice is fixed
and blind to content) and the XSTest safe test prompts (over-refusal). Writes the JSONL files the
harness reads (under runs/, never committed) and the chosen ids (committed).

    ../.venv/bin/python attack_set.py --splits ../runs/data --out ../runs/attack
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path


def _rank(rid: str) -> str:
    return hashlib.sha256(rid.encode()).hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--splits", type=Path, default=Path("../runs/data"))
    ap.add_argument("--out", type=Path, default=Path("../runs/attack"))
    ap.add_argument("--per-source", type=int, default=50)
    ap.add_argument("--ids", type=Path, default=Path("results/attack_ids.json"))
    a = ap.parse_args()
    rows = [json.loads(x) for x in (a.splits / "prompts_test.jsonl").open() if x.strip()]
    harmful = []
    for src in ("advbench", "donotanswer"):
        pool = sorted(
            (r for r in rows if r["source"] == src and r["label"] == 1),
            key=lambda r: _rank(r["id"]),
        )
        harmful += pool[: a.per_source]
    benign = [r for r in rows if r["source"] == "xstest" and r["label"] == 0]
    a.out.mkdir(parents=True, exist_ok=True)
    for name, rs in (("harmful", harmful), ("benign_xstest", benign)):
        with (a.out / f"{name}.jsonl").open("w") as f:
            for r in rs:
                f.write(json.dumps({"id": r["id"], "prompt": r["prompt"]}) + "\n")
    a.ids.parent.mkdir(parents=True, exist_ok=True)
    a.ids.write_text(
        json.dumps(
            {"harmful": [r["id"] for r in harmful], "benign_xstest": [r["id"] for r in benign]},
            indent=1,
        )
        + "\n"
    )
    print(f"{len(harmful)} harmful and {len(benign)} benign prompts -> {a.out}; ids -> {a.ids}")


if __name__ == "__main__":
    main()
