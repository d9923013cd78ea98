"""Within-prefix ranking of MRMs on judged children, against two baselines that read no context.

``saffron eval mrm`` judges fresh prefixes on every call (about 10 minutes a model on one thread). This
script reads the children a judge already scored (``saffron data children`` on the held-out rollouts), so
comparing MRMs costs one forward per held-out response. Beside each MRM it reports two baselines that
show how much of the judge's order needs the context at all:

* ``policy_order``: the policy's own ranking (children are stored most likely first);
* ``token_table``: each token's mean centred judge reward over the training children (a per-token
  constant, the same in every context; tokens it never saw score 0), raw and shrunk by one pseudo-count
  (``token_table_pc1``: the start of ``saffron train mrm --token-bias``).

Spearman per judged position (two or more children, judge not all tied), mean with a bootstrap 95% CI,
for all positions and for the plain and prefilled rollouts apart. Ids and numbers only are written.

    cd benchmarks && OMP_NUM_THREADS=1 ../.venv/bin/python mrm_children_ranking.py \\
        --test ../runs/mrm-children/children_test.jsonl --train ../runs/mrm-children/children_train.jsonl \\
        --mrm rank20=../runs/mrm-children/mrm-rank --out results/mrm_children_ranking.json
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import torch

from saffron_runtime.evaluation.mrm_eval import bootstrap_ci, spearman
from saffron_runtime.jsonl import read_jsonl
from saffron_runtime.models.mrm import MultifurcationRewardModel
from saffron_runtime.models.mrm_io import load_mrm
from saffron_runtime.models.token_bias import mean_centred_child_reward
from saffron_runtime.training.reward_data import TokenRewardRecord

Scorer = Callable[[TokenRewardRecord], list[list[float]]]
"""Scores of every judged child of a record, one list per ``children`` entry."""


def token_table(train: list[TokenRewardRecord], pseudo_count: float) -> torch.Tensor:
    """Mean centred judge reward per token id over the training children (the MRM's ``--token-bias``
    start at ``pseudo_count`` 1; the raw mean at 0)."""
    vocab = 1 + max(i for r in train for c in r.children for i in c.ids)
    return mean_centred_child_reward(((c.ids, c.rewards) for r in train for c in r.children), vocab, pseudo_count)


def _lookup(table: torch.Tensor) -> Scorer:
    """A context-free scorer: the table's value of each child (0 for ids it never saw)."""
    return lambda r: [[float(table[i]) if i < len(table) else 0.0 for i in c.ids] for c in r.children]


def mrm_scorer(mrm: MultifurcationRewardModel) -> Scorer:
    """The MRM's rewards of every judged child, from one forward over the whole response."""

    @torch.no_grad()
    def score(r: TokenRewardRecord) -> list[list[float]]:
        pre = mrm.template.prompt_ids(mrm.tokenizer, r.prompt)
        ids = torch.tensor([pre + r.response_ids[:-1]])
        logits = mrm.model(input_ids=ids).logits[0].float()
        return [logits[len(pre) - 1 + c.t, c.ids].tolist() for c in r.children]

    return score


def per_position(records: list[TokenRewardRecord], scorer: Scorer) -> dict[str, list[float]]:
    """Spearman per rankable judged position, for all records and the plain / prefilled ones apart."""
    out: dict[str, list[float]] = {"all": [], "plain": [], "prefill": []}
    for r in records:
        subset = "prefill" if r.prefill_ids else "plain"
        for c, pred in zip(r.children, scorer(r), strict=True):
            if len(c.ids) < 2:
                continue
            rho = spearman(pred, c.rewards)
            if rho == rho:  # NaN: all tied
                out["all"].append(rho)
                out[subset].append(rho)
    return out


def summary(values: list[float]) -> dict[str, float | int]:
    """Mean, bootstrap CI and count."""
    lo, hi = bootstrap_ci(values)
    return {"mean": sum(values) / len(values), "ci_low": lo, "ci_high": hi, "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--test", type=Path, required=True, help="held-out records with judged children")
    ap.add_argument("--train", type=Path, required=True, help="training records (for the token table)")
    ap.add_argument("--mrm", action="append", default=[], help="NAME=FOLDER, repeatable")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    test = [r for r in read_jsonl(args.test, TokenRewardRecord) if r.children]
    train = read_jsonl(args.train, TokenRewardRecord)
    scorers: dict[str, Scorer] = {
        "policy_order": lambda r: [[-float(k) for k in range(len(c.ids))] for c in r.children],
        "token_table": _lookup(token_table(train, 0.0)),
        "token_table_pc1": _lookup(token_table(train, 1.0)),
    }
    for spec in args.mrm:
        name, folder = spec.split("=", 1)
        scorers[name] = mrm_scorer(load_mrm(folder, dtype="float32"))
    rows = {}
    print(f"{'ranker':<16} {'all [95% CI]':<26} {'plain':>7} {'prefill':>8} {'positions':>9}")
    for name, scorer in scorers.items():
        res = per_position(test, scorer)
        rows[name] = {k: summary(v) for k, v in res.items() if v}
        a = rows[name]["all"]
        print(
            f"{name:<16} {a['mean']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]      "
            f"{rows[name]['plain']['mean']:>7.3f} {rows[name]['prefill']['mean']:>8.3f} {a['n']:>9}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"test": str(args.test), "rankers": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
