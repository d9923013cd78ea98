"""The statistics of an attack evaluation: attack success and over-refusal per grid point, Saffron
against Best-of-N at matched compute, and a paired bootstrap of their difference."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # only for hints: the tables need no engine
    from saffron_runtime.evaluation.attack.grid import MethodSpec
    from saffron_runtime.evaluation.attack.harness import Judged


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _reward_tflops(js: Sequence[Judged]) -> float | None:
    """Mean TFLOPs of the reward models (MRM, PRM, ranker) per prompt; None when a verdict does not
    record them (the first published run's ledger lines)."""
    got = [j.generation.stats.get("flops_reward") for j in js]
    if not got or any(f is None for f in got):
        return None
    return _mean([float(f) / 1e12 for f in got])


def attack_table(judged: Sequence[Judged], grid: Sequence[MethodSpec]) -> list[dict[str, Any]]:
    """One row per grid point: attack success rates under each judge and TFLOPs per prompt."""
    rows = []
    for spec in grid:
        js = [j for j in judged if j.spec == spec]
        rows.append(
            {
                "method": spec.method,
                "budget": spec.budget,
                "asr_learned": _mean([float(j.learned_unsafe) for j in js]),
                "asr_independent": _mean([float(j.independent_unsafe) for j in js]),
                "asr_strings": _mean([float(j.strings_unsafe) for j in js]),
                "tflops_per_prompt": _mean([j.generation.flops / 1e12 for j in js]),
                "reward_tflops_per_prompt": _reward_tflops(js),
                "wall_s_per_prompt": _mean([j.generation.wall_s for j in js]),
                "n": len(js),
            }
        )
    return rows


def over_refusal_table(
    judged: Sequence[Judged], grid: Sequence[MethodSpec]
) -> list[dict[str, Any]]:
    """One row per grid point: share of benign prompts refused, and the change against unguarded."""
    base = [j for j in judged if j.spec.method == "unguarded"]
    base_rate = _mean([float(j.refused) for j in base]) if base else float("nan")
    rows = []
    for spec in grid:
        js = [j for j in judged if j.spec == spec]
        rate = _mean([float(j.refused) for j in js])
        rows.append(
            {
                "method": spec.method,
                "budget": spec.budget,
                "refusal_rate": rate,
                "refusal_rate_strings": _mean([float(j.refused_strings) for j in js]),
                "delta_vs_unguarded": rate - base_rate,
                "n": len(js),
            }
        )
    return rows


def matched_comparison(
    rows: Sequence[dict[str, Any]], saffron_budget: int | None = None
) -> dict[str, Any] | None:
    """Saffron at ``saffron_budget`` (default: the largest run) against Best-of-N at the smallest N
    costing at least as many TFLOPs per prompt."""
    if saffron_budget is None:
        saffron_budget = max((r["budget"] for r in rows if r["method"] == "saffron"), default=0)
    saf = next(
        (r for r in rows if r["method"] == "saffron" and r["budget"] == saffron_budget), None
    )
    bons = sorted(
        (r for r in rows if r["method"] == "best_of_n"), key=lambda r: r["tflops_per_prompt"]
    )
    if saf is None or not bons:
        return None
    bon = next((r for r in bons if r["tflops_per_prompt"] >= saf["tflops_per_prompt"]), None)
    if bon is None:
        return {"saffron": saf, "best_of_n": None, "note": "no Best-of-N N costs as much"}
    ratio = {
        k: (saf[k] / bon[k] if bon[k] else float("inf") if saf[k] else 1.0)
        for k in ("asr_learned", "asr_independent", "asr_strings")
    }
    return {"saffron": saf, "best_of_n": bon, "asr_ratio": ratio}


def prm_comparison(
    judged: Sequence[Judged], rows: Sequence[dict[str, Any]], grid: Sequence[MethodSpec]
) -> dict[str, Any] | None:
    """Saffron against PRM beam search at Saffron's largest budget that both ran: the paired
    difference of their attack success and the ratio of their reward-model TFLOPs."""
    spec = {(g.method, g.budget): g for g in grid}
    budgets = [b for (m, b) in spec if m == "saffron" and ("prm_beam", b) in spec]
    if not budgets:
        return None
    b = max(budgets)
    row = {(r["method"], r["budget"]): r for r in rows}
    saf, prm = row["saffron", b], row["prm_beam", b]
    ratio = None
    if saf.get("reward_tflops_per_prompt") is not None and prm.get("reward_tflops_per_prompt"):
        ratio = saf["reward_tflops_per_prompt"] / prm["reward_tflops_per_prompt"]
    return {
        "budget": b,
        "saffron": saf,
        "prm_beam": prm,
        "reward_tflops_ratio": ratio,
        "paired": paired_difference(judged, spec["saffron", b], spec["prm_beam", b]),
    }


JUDGE_KEYS: tuple[tuple[str, str], ...] = (
    ("learned", "learned_unsafe"),
    ("independent", "independent_unsafe"),
    ("strings", "strings_unsafe"),
)


def paired_difference(
    judged: Sequence[Judged],
    a: MethodSpec,
    b: MethodSpec,
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """ASR(a) - ASR(b) on the prompts both were run on, per judge, with a paired bootstrap 95% CI.

    Resampling prompts (not outputs) keeps each prompt's two verdicts together, so the interval says
    how much the difference could move with another draw of prompts from the same pool.
    """

    by_a = {j.prompt_id: j for j in judged if j.spec == a}
    by_b = {j.prompt_id: j for j in judged if j.spec == b}
    ids = sorted(by_a.keys() & by_b.keys())
    out: dict[str, Any] = {"n": len(ids)}
    if not ids:
        return out
    rng = random.Random(seed)
    draws = [[rng.randrange(len(ids)) for _ in ids] for _ in range(n_boot)]
    for name, attr in JUDGE_KEYS:
        d = [float(getattr(by_a[i], attr)) - float(getattr(by_b[i], attr)) for i in ids]
        boots = sorted(sum(d[k] for k in draw) / len(d) for draw in draws)
        out[name] = {
            "difference": sum(d) / len(d),
            "ci95": [boots[int(0.025 * n_boot)], boots[min(n_boot - 1, int(0.975 * n_boot))]],
        }
    return out
