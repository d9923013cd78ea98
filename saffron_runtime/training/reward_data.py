"""Token-level reward data (our Safety4M): roll out a policy, score every response prefix with a judge.

Output schema (JSONL, one record per response, see :class:`TokenRewardRecord`): ``rewards[t]`` is the
judge's margin for ``prompt + response_ids[: t + 1]`` (higher = safer). When a response ends with EOS,
its EOS entry is supervised with the full-response score (the judge never sees the EOS token itself).
With a prefilling attack, ``prefill_ids`` were forced after the assistant header; the judge and the
MRM see only the prompt and the continuation (DESIGN 1.1, evaluation).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

import torch
from pydantic import BaseModel, Field, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from saffron_runtime.cancel import raise_if_stopped
from saffron_runtime.errors import DataError
from saffron_runtime.jsonl import iter_jsonl
from saffron_runtime.models.chat import chat_prompt_ids
from saffron_runtime.models.loading import LoadedModel
from saffron_runtime.training.judges import PrefixJudge


class PromptItem(BaseModel):
    """One prompt to roll out, with an optional prefilling-attack string and a source label."""

    id: str
    prompt: str = Field(min_length=1)
    prefill: str = ""
    label: int | None = None
    source: str = ""


class TokenRewardRecord(BaseModel):
    """One response with a reward for every token (schema of the reward-data JSONL)."""

    id: str
    prompt: str
    response_ids: list[int] = Field(min_length=1)
    rewards: list[float]
    prefill_ids: list[int] = Field(default_factory=list)
    ended_with_eos: bool = False
    label: int | None = None
    source: str = ""
    judge: str = ""
    policy: str = ""

    @model_validator(mode="after")
    def _lengths_agree(self) -> TokenRewardRecord:
        if len(self.rewards) != len(self.response_ids):
            raise ValueError(
                f"rewards has {len(self.rewards)} entries but response_ids has {len(self.response_ids)}"
            )
        return self


def with_prefill_attack(
    items: Sequence[PromptItem], prefill: str, *, keep_plain: bool = True
) -> list[PromptItem]:
    """Add a prefilling attack to every harmful item (``label == 1``) without one.

    With ``keep_plain`` the harmful prompt is rolled out twice: as given (the policy may refuse, which
    teaches the MRM what a safe opening looks like) and prefilled (id ``<id>/prefill``, where
    harmful continuations occur). Benign items are kept as they are.
    """
    if not prefill.strip():
        raise DataError(
            "the prefill string is empty: pass the text forced after the assistant header"
        )
    out: list[PromptItem] = []
    for it in items:
        if it.label != 1 or it.prefill:
            out.append(it)
            continue
        if keep_plain:
            out.append(it)
        out.append(it.model_copy(update={"id": f"{it.id}/prefill", "prefill": prefill}))
    return out


def _chat_ids(loaded: LoadedModel, prompt: str) -> list[int]:
    return chat_prompt_ids(loaded.tokenizer, prompt)


@torch.no_grad()
def rollout(
    policy: LoadedModel,
    items: Sequence[PromptItem],
    *,
    max_new_tokens: int = 64,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 0.95,
    seed: int = 0,
) -> list[tuple[list[int], list[int], bool]]:
    """Generate one response per item as a batch: (prefill ids, continuation ids, ended with EOS).

    Inputs are left-padded chat-template ids plus the prefill ids; the continuation is cut at the
    first EOS, which is kept as its last token.
    """
    tok, model = policy.tokenizer, policy.model
    eos = tok.eos_token_id
    prefixes, prefills = [], []
    for it in items:
        pre = tok(it.prefill, add_special_tokens=False)["input_ids"] if it.prefill else []
        prefixes.append(_chat_ids(policy, it.prompt) + pre)
        prefills.append(list(pre))
    width = max(len(p) for p in prefixes)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prefixes], device=model.device)
    mask = torch.tensor(
        [[0] * (width - len(p)) + [1] * len(p) for p in prefixes], device=model.device
    )
    torch.manual_seed(seed)
    out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        pad_token_id=pad,
        eos_token_id=eos,
    )
    results = []
    for row, pre in zip(out[:, width:].tolist(), prefills, strict=True):
        ended = eos in row
        cont = row[: row.index(eos) + 1] if ended else row
        results.append((pre, cont, ended))
    return results


def score_record(
    judge: PrefixJudge,
    item: PromptItem,
    prefill_ids: list[int],
    response_ids: list[int],
    ended_with_eos: bool,
    *,
    eos_token_id: int | None,
    policy_name: str,
) -> TokenRewardRecord:
    """Score every prefix; the EOS entry (if any) gets the full-response score (its last prefix's)."""
    body = response_ids[:-1] if ended_with_eos else response_ids
    rewards = judge.score_prefixes(item.prompt, body)
    if not rewards:
        raise DataError(f"record {item.id}: the response is empty (only EOS); nothing to score")
    if ended_with_eos:
        rewards = [*rewards, rewards[-1]]
    return TokenRewardRecord(
        id=item.id,
        prompt=item.prompt,
        response_ids=response_ids,
        rewards=rewards,
        prefill_ids=prefill_ids,
        ended_with_eos=ended_with_eos,
        label=item.label,
        source=item.source,
        judge=judge.name,
        policy=policy_name,
    )


def _write_scored(
    policy: LoadedModel,
    judge: PrefixJudge,
    todo: Sequence[PromptItem],
    rolled: Sequence[tuple[list[int], list[int], bool]],
    f: TextIO,
    filter_fn: Callable[[TokenRewardRecord], bool] | None,
) -> int:
    """Score each rolled-out answer and write the kept records to ``f``; the tokens written."""
    written = 0
    for it, (pre, cont, ended) in zip(todo, rolled, strict=True):
        if not cont or cont == [policy.tokenizer.eos_token_id]:
            continue  # an empty answer has no prefix to score
        rec = score_record(
            judge,
            it,
            pre,
            cont,
            ended,
            eos_token_id=policy.tokenizer.eos_token_id,
            policy_name=policy.source,
        )
        if filter_fn is None or filter_fn(rec):
            f.write(json.dumps(rec.model_dump(mode="json"), ensure_ascii=False) + "\n")
            written += len(cont)
    return written


def build_reward_data(
    policy: LoadedModel,
    judge: PrefixJudge,
    items: Sequence[PromptItem],
    out: str | os.PathLike[str],
    *,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    do_sample: bool = True,
    top_p: float = 0.95,
    stop_event: object | None = None,
    progress: bool = True,
    filter_fn: Callable[[TokenRewardRecord], bool] | None = None,
) -> Path:
    """Roll out ``items`` and append scored records to ``out`` (resumable: done ids are skipped).

    Seeded per batch (``seed + batch index``), so a resumed run produces what an uninterrupted one would.
    """
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    done = {r.id for r in iter_jsonl(out_p, TokenRewardRecord)} if out_p.is_file() else set()
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise DataError("prompt ids must be unique: the output is resumed by id")
    batches = [list(items[i : i + batch_size]) for i in range(0, len(items), batch_size)]
    t0, written = time.perf_counter(), 0
    cols = (
        TextColumn("rollouts"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[rate]}"),
    )
    with Progress(*cols, disable=not progress) as bar, out_p.open("a", encoding="utf-8") as f:
        task = bar.add_task("rollouts", total=len(items), completed=len(done & set(ids)), rate="")
        for b, batch in enumerate(batches):
            todo = [it for it in batch if it.id not in done]
            if not todo:
                continue
            raise_if_stopped(stop_event, "reward-data build")  # type: ignore[arg-type]
            rolled = rollout(
                policy,
                todo,
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                top_p=top_p,
                seed=seed + b,
            )
            written += _write_scored(policy, judge, todo, rolled, f, filter_fn)
            f.flush()
            bar.update(
                task,
                advance=len(todo),
                rate=f"{written / max(time.perf_counter() - t0, 1e-9):.0f} tok/s",
            )
    return out_p
