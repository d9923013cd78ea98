"""How well an MRM reproduces its judge: pooled Spearman over held-out prefixes, within-prefix ranking.

Two questions: does the predicted reward of the observed next token track the judge's score of
that prefix across many responses (pooled Spearman), and, at one node, does the MRM order the policy's
candidate children as the judge would (within-prefix Spearman, mean with a bootstrap 95% CI)? The
second is what the search actually relies on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from saffron_runtime.errors import DataError
from saffron_runtime.models.chat import chat_prompt_ids
from saffron_runtime.models.loading import LoadedModel
from saffron_runtime.models.mrm import MultifurcationRewardModel
from saffron_runtime.search.nucleus import nucleus
from saffron_runtime.training.judges import CausalHeadJudge, PrefixJudge
from saffron_runtime.training.reward_data import TokenRewardRecord


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Ranks with ties given their average rank (as scipy.stats.rankdata)."""
    order = x.argsort()
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.arange(len(x), dtype=torch.float64)
    uniq, inv = torch.unique(x, return_inverse=True)
    if len(uniq) < len(x):
        sums = torch.zeros(len(uniq), dtype=torch.float64).index_add_(0, inv, ranks)
        counts = torch.zeros(len(uniq), dtype=torch.float64).index_add_(
            0, inv, torch.ones_like(ranks)
        )
        ranks = (sums / counts)[inv]
    return ranks


def spearman(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Spearman rank correlation; NaN when either side is constant or has fewer than 2 values."""
    x = torch.as_tensor(a, dtype=torch.float64).flatten()
    y = torch.as_tensor(b, dtype=torch.float64).flatten()
    if x.shape != y.shape:
        raise ValueError(f"spearman: {x.numel()} values against {y.numel()}")
    if x.numel() < 2:
        return float("nan")
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = (rx.pow(2).sum() * ry.pow(2).sum()).sqrt()
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = 2000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean."""
    v = torch.tensor(list(values), dtype=torch.float64)
    if v.numel() == 0:
        raise DataError("bootstrap_ci: no values")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, v.numel(), (n_boot, v.numel()), generator=g)
    means = v[idx].mean(1).sort().values
    lo = int((1 - level) / 2 * n_boot)
    hi = min(n_boot - 1, int((1 + level) / 2 * n_boot))
    return float(means[lo]), float(means[hi])


@torch.no_grad()
def observed_rewards(
    mrm: MultifurcationRewardModel, prompt: str, response_ids: list[int]
) -> list[float]:
    """``R(x, y_<t)[y_t]`` for every t, from one forward (raw, unseen tokens not masked)."""
    pre = mrm.template.prompt_ids(mrm.tokenizer, prompt)
    ids = torch.tensor([pre + response_ids[:-1]], device=mrm.model.device)
    logits = mrm.model(input_ids=ids).logits[0, len(pre) - 1 :].float()
    return logits.gather(1, torch.tensor(response_ids, device=logits.device)[:, None])[
        :, 0
    ].tolist()


@dataclass
class MRMEvalReport:
    """What :func:`evaluate_mrm` measured (JSON-ready via :meth:`to_dict`)."""

    pooled_spearman: float
    pooled_tokens: int
    pooled_records: int
    within_prefix_mean: float
    within_prefix_ci_low: float
    within_prefix_ci_high: float
    within_prefix_n: int
    mean_children: float
    top_p: float
    skipped_prefixes: int

    def to_dict(self) -> dict[str, float | int]:
        """Plain dict for JSON output."""
        return asdict(self)


def _children(
    policy: LoadedModel, r: TokenRewardRecord, prefix: list[int], top_p: float, max_children: int
) -> list[int]:
    """The policy's top-p nucleus after ``prefix`` (EOS banned, most likely first, capped)."""
    ctx = chat_prompt_ids(policy.tokenizer, r.prompt) + r.prefill_ids + prefix
    logits = policy.model(
        input_ids=torch.tensor([ctx], device=policy.model.device), logits_to_keep=1
    ).logits[0, -1]
    banned = torch.zeros(logits.shape[-1], dtype=torch.bool)
    if policy.tokenizer.eos_token_id is not None:
        banned[policy.tokenizer.eos_token_id] = True  # the judge never sees EOS
    kids, _ = nucleus(logits, top_p, banned=banned.to(logits.device))
    return kids[:max_children].tolist()


def _prefix_spearman(
    mrm: MultifurcationRewardModel,
    judge: PrefixJudge,
    r: TokenRewardRecord,
    prefix: list[int],
    kids: list[int],
) -> float:
    """Spearman of the MRM's rewards of ``kids`` against the judge's scores (NaN on all ties)."""
    if isinstance(judge, CausalHeadJudge):  # one shared-prefix forward, children batched
        judged = judge.score_children(r.prompt, prefix, kids)
    else:
        judged = [judge.score_prefixes(r.prompt, [*prefix, c])[-1] for c in kids]
    mrm_ids = mrm.template.prompt_ids(mrm.tokenizer, r.prompt) + prefix
    row = mrm.rewards(torch.tensor([mrm_ids], device=mrm.model.device))[0]
    return spearman(row[torch.tensor(kids, device=row.device)].cpu(), judged)


def _within_prefix(
    mrm: MultifurcationRewardModel,
    judge: PrefixJudge,
    policy: LoadedModel,
    records: Sequence[TokenRewardRecord],
    *,
    n_prefixes: int,
    top_p: float,
    max_children: int,
    seed: int,
) -> tuple[list[float], list[int], int]:
    """(Spearman per rankable prefix, children per prefix, prefixes skipped), up to ``n_prefixes``
    drawn with ``random.Random(seed)`` (at most ``4 * n_prefixes`` tries)."""
    rng = random.Random(seed)
    per_prefix: list[float] = []
    n_children: list[int] = []
    skipped = 0
    tries = 0
    while len(per_prefix) < n_prefixes and tries < 4 * n_prefixes:
        tries += 1
        r = records[rng.randrange(len(records))]
        body = r.response_ids[:-1] if r.ended_with_eos else r.response_ids
        prefix = body[: rng.randrange(len(body))]
        kids = _children(policy, r, prefix, top_p, max_children)
        if len(kids) < 2:
            skipped += 1
            continue
        rho = _prefix_spearman(mrm, judge, r, prefix, kids)
        if rho != rho:  # NaN: the judge (or the MRM) ties every child
            skipped += 1
            continue
        per_prefix.append(rho)
        n_children.append(len(kids))
    return per_prefix, n_children, skipped


@torch.no_grad()
def evaluate_mrm(
    mrm: MultifurcationRewardModel,
    judge: PrefixJudge,
    policy: LoadedModel,
    records: Sequence[TokenRewardRecord],
    *,
    n_prefixes: int = 200,
    top_p: float = 0.9,
    max_children: int = 16,
    seed: int = 0,
    n_boot: int = 2000,
) -> MRMEvalReport:
    """Pooled Spearman over every held-out token, then the within-prefix ranking on ``n_prefixes``.

    A prefix is a random (record, position) pair; its children are the policy's top-p nucleus at
    that node (capped at ``max_children``, most likely first), each scored by the judge on
    ``prompt + prefix + child`` and by the MRM in one forward. Prefixes whose nucleus has fewer than
    two children, or where all judge scores tie, carry no ranking and are skipped (counted).
    """
    if not records:
        raise DataError("evaluate_mrm: no held-out records")
    preds: list[float] = []
    targets: list[float] = []
    for r in records:
        preds += observed_rewards(mrm, r.prompt, r.response_ids)
        targets += r.rewards
    pooled = spearman(preds, targets)
    per_prefix, n_children, skipped = _within_prefix(
        mrm,
        judge,
        policy,
        records,
        n_prefixes=n_prefixes,
        top_p=top_p,
        max_children=max_children,
        seed=seed,
    )
    if not per_prefix:
        raise DataError("no held-out prefix had two or more rankable children")
    lo, hi = bootstrap_ci(per_prefix, n_boot=n_boot, seed=seed)
    return MRMEvalReport(
        pooled_spearman=pooled,
        pooled_tokens=len(preds),
        pooled_records=len(records),
        within_prefix_mean=sum(per_prefix) / len(per_prefix),
        within_prefix_ci_low=lo,
        within_prefix_ci_high=hi,
        within_prefix_n=len(per_prefix),
        mean_children=sum(n_children) / len(n_children),
        top_p=top_p,
        skipped_prefixes=skipped,
    )
