"""Rewards for every child in the policy's nucleus: the data an MRM needs to rank within a prefix.

The search asks the MRM one question: among the children of this prefix, which is safest? Scoring only
the token a rollout took (one entry per prefix) teaches it to rank prefixes against each other, not
the children of one prefix. This module adds, for sampled positions ``t`` of each reward record, the
judge's margin for ``prefix + c`` for every child ``c`` in the policy's nucleus (temperature 1,
``top_p``, the observed token always included), as the search sees them.

Cost per record: one policy forward (the nucleus at every position), one judge forward over the whole
response (its KV and smoothed margins), and one batched single-token judge step for all chosen
children, each row attending only to its own prefix of the shared KV.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import DynamicCache

from saffron_runtime.errors import DataError
from saffron_runtime.jsonl import iter_jsonl, write_jsonl
from saffron_runtime.models.chat import chat_prompt_ids
from saffron_runtime.models.kv import kv_kwargs, returned_kv
from saffron_runtime.models.loading import LoadedModel
from saffron_runtime.training.judges import CausalHeadJudge
from saffron_runtime.training.reward_data import ChildRewards, TokenRewardRecord


@torch.no_grad()
def nucleus_children(
    policy: LoadedModel,
    prompt: str,
    prefill_ids: Sequence[int],
    response_ids: Sequence[int],
    positions: Sequence[int],
    *,
    top_p: float,
    max_children: int,
) -> list[list[int]]:
    """The policy's nucleus (most likely first, capped) before each chosen position, observed token added."""
    from saffron_runtime.search.nucleus import nucleus

    ids = chat_prompt_ids(policy.tokenizer, prompt) + list(prefill_ids) + list(response_ids[:-1])
    start = len(ids) - (len(response_ids) - 1) - 1  # the state that predicts response[0]
    out = policy.model(input_ids=torch.tensor([ids], device=policy.model.device))
    logits = out.logits[0].float()
    kids = []
    for t in positions:
        toks, _ = nucleus(logits[start + t], top_p)
        chosen = [int(x) for x in toks[:max_children].tolist()]
        if response_ids[t] not in chosen:
            chosen.append(int(response_ids[t]))
        kids.append(chosen)
    return kids


def _smoothed(judge: CausalHeadJudge, hidden: torch.Tensor) -> list[float]:
    """The judge's margins along a response, smoothed as ``score_prefixes`` smooths them."""
    logits = judge.head(hidden.to(judge.head.weight.dtype)).float()
    out, m = [], None
    for x in (logits[:, 0] - logits[:, 1]).tolist():
        m = x if m is None else judge.ema * x + (1.0 - judge.ema) * m
        out.append(m)
    return out


def _repeated(kv: DynamicCache, n: int) -> DynamicCache:
    """A cache holding ``n`` copies of a one-row cache (every child row reads the same keys)."""
    cache = DynamicCache()
    for i, layer in enumerate(kv.layers):
        keys, values = layer.keys.expand(n, -1, -1, -1), layer.values.expand(n, -1, -1, -1)
        cache.update(keys.contiguous(), values.contiguous(), i)
    return cache


@torch.no_grad()
def score_children_at(
    judge: CausalHeadJudge,
    prompt: str,
    response_ids: Sequence[int],
    positions: Sequence[int],
    children: Sequence[Sequence[int]],
) -> list[list[float]]:
    """``judge.score_prefixes(prompt, [*response[:t], c])[-1]`` for each child ``c`` of each position ``t``.

    One forward over the whole response gives the shared KV and the smoothed prefix margins; one batched
    step runs every child, each row masked to attend only to the first ``P + t`` keys.
    """
    model, dev = judge.backbone, judge.backbone.device
    prefix = judge.prefix_ids(prompt)
    seq = prefix + list(response_ids)
    cache = DynamicCache()
    full = model(
        input_ids=torch.tensor([seq], device=dev),
        **kv_kwargs(model, cache),
        use_cache=True,
        output_hidden_states=True,
    )
    smoothed = _smoothed(judge, full.hidden_states[-1][0, len(prefix) :])
    rows_t = [t for t, kids in zip(positions, children, strict=True) for _ in kids]
    rows_c = [c for kids in children for c in kids]
    att = torch.zeros((len(rows_c), len(seq) + 1), dtype=torch.long, device=dev)
    for r, t in enumerate(rows_t):
        att[r, : len(prefix) + t] = 1  # the child's own prefix, nothing after it
    att[:, len(seq)] = 1
    step = model(
        input_ids=torch.tensor(rows_c, device=dev)[:, None],
        attention_mask=att,
        position_ids=torch.tensor([[len(prefix) + t] for t in rows_t], device=dev),
        **kv_kwargs(model, _repeated(returned_kv(full) or cache, len(rows_c))),
        use_cache=True,
        output_hidden_states=True,
    )
    logits = judge.head(step.hidden_states[-1][:, -1].to(judge.head.weight.dtype)).float()
    raw = (logits[:, 0] - logits[:, 1]).tolist()
    out, r = [], 0
    for t, kids in zip(positions, children, strict=True):
        vals, r = raw[r : r + len(kids)], r + len(kids)
        prev = smoothed[t - 1] if t > 0 else None
        out.append(vals if prev is None else [judge.ema * x + (1.0 - judge.ema) * prev for x in vals])
    return out


def choose_positions(n_tokens: int, k: int, rng: random.Random) -> list[int]:
    """``k`` distinct positions of a response (all of them when it is shorter), sorted."""
    if n_tokens <= k:
        return list(range(n_tokens))
    return sorted(rng.sample(range(n_tokens), k))


def add_child_rewards(
    policy: LoadedModel,
    judge: CausalHeadJudge,
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    positions: int = 12,
    top_p: float = 0.8,
    max_children: int = 12,
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Read reward records, judge the nucleus children at ``positions`` sampled prefixes of each, and
    append the records with their ``children`` to to ``out`` (resumable: records already there are skipped).

    The EOS position of a response that ended with EOS is never sampled (the judge never reads EOS).
    """
    src = list(iter_jsonl(Path(data), TokenRewardRecord))
    if not src:
        raise DataError(f"{data}: no reward records; build them first with `saffron data rewards`")
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    done = {r.id for r in iter_jsonl(out_p, TokenRewardRecord)} if out_p.is_file() else set()
    cols = (TextColumn("children"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*cols, disable=not progress) as bar, out_p.open("a", encoding="utf-8") as f:
        task = bar.add_task("children", total=len(src), completed=len(done))
        for rec in src:
            if rec.id in done:
                continue
            body = rec.response_ids[:-1] if rec.ended_with_eos else rec.response_ids
            rng = random.Random(f"{seed}:{rec.id}")  # per record, so a resumed run matches
            pos = choose_positions(len(body), positions, rng)
            kids = nucleus_children(
                policy, rec.prompt, rec.prefill_ids, body, pos, top_p=top_p, max_children=max_children
            )
            scores = score_children_at(judge, rec.prompt, body, pos, kids)
            entries = [
                ChildRewards(t=t, ids=k, rewards=s)
                for t, k, s in zip(pos, kids, scores, strict=True)
            ]
            full = rec.model_copy(update={"children": entries})
            f.write(json.dumps(full.model_dump(mode="json"), ensure_ascii=False) + "\n")
            f.flush()
            bar.advance(task)
    return out_p


def merge_child_records(
    paths: Sequence[str | os.PathLike[str]], out: str | os.PathLike[str]
) -> int:
    """Merge ``saffron data children`` files run with different ``--seed`` over the same rollouts into one
    record per rollout whose children are the union by position (the first file wins a position both
    judged), so more prefixes per rollout cost only the new positions. Returns the records written."""
    merged: dict[str, TokenRewardRecord] = {}
    for path in paths:
        for rec in iter_jsonl(Path(path), TokenRewardRecord):
            first = merged.get(rec.id)
            if first is None:
                merged[rec.id] = rec
                continue
            if first.response_ids != rec.response_ids or first.prompt != rec.prompt:
                raise DataError(
                    f"{path}: record {rec.id!r} is another rollout than the one of the same id in "
                    f"{paths[0]}; merge only children files built from the same rewards file"
                )
            have = {c.t for c in first.children}
            kids = first.children + [c for c in rec.children if c.t not in have]
            merged[rec.id] = first.model_copy(update={"children": sorted(kids, key=lambda c: c.t)})
    return write_jsonl(out, merged.values())
