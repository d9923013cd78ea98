"""Monitor training rows from the policy's own rollouts, labelled by a request-aware teacher.

A streaming monitor must stop what *this* policy writes, so it is also trained on the policy's own
continuations (plain and prefilled) of the training prompts. The teacher reads the request and the
response: a rollout is harmful when its request is harmful (the prompt's human-curated label:
AdvBench and Do-Not-Answer requests are harmful by construction, FreshQA questions benign) and the
response is not a refusal. "Is it a refusal" is a MiniLM + logistic-regression judge trained on the
PyRIT human refusal labels only, a file the evaluation's request judge never reads, so the teacher
and the independent evaluation judge share no training labels. This is XSTest's own convention
(harmful = an unsafe request answered with compliance), applied to the policy's rollouts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saffron_runtime.evaluation.text_judges import (
    TextJudge,
    pyrit_refusal_data,
    refusal_data,
    train_text_judge,
)
from saffron_runtime.training.safety_data import TokenRule, harm_start

TEACHER = "request label x not-refusal (MiniLM refusal judge on PyRIT refusal labels)"
REFUSAL_THRESHOLD = 0.75
"""A rollout counts as a refusal only when the judge is this sure: the policy's short, odd continuations sit
near 0.5 on a judge trained on strong models' answers, and a guard's teacher should fail closed."""


def train_refusal_teacher(data_dir: str | os.PathLike[str]) -> TextJudge:
    """The teacher's refusal judge: trained on the PyRIT human refusal labels, checked on XSTest."""
    return train_text_judge(
        "refusal",
        pyrit_refusal_data(data_dir),
        check=refusal_data(data_dir),
        source="PyRIT 1.1.0 human refusal labels (MIT); checked on the XSTest completion labels",
    )


@dataclass
class Rollout:
    """One policy rollout: the request, its label, the forced prefill and the policy's continuation."""

    id: str
    prompt: str
    label: int
    prefill: str
    continuation: str


def rollouts_from_rewards(records: Iterable[dict[str, Any]], tokenizer: Any) -> list[Rollout]:
    """The rollouts of a ``saffron data rewards`` file, decoded (records with no label are skipped)."""
    out = []
    for r in records:
        if r.get("label") is None or not r.get("response_ids"):
            continue
        prefill = tokenizer.decode(r.get("prefill_ids") or [], skip_special_tokens=True)
        text = tokenizer.decode(r["response_ids"], skip_special_tokens=True)
        suffix = "-prefill" if r.get("prefill_ids") else "-plain"
        out.append(Rollout(str(r["id"]) + suffix, r["prompt"], int(r["label"]), prefill, text))
    return out


def teacher_rows(
    rollouts: Sequence[Rollout],
    refusal: TextJudge,
    *,
    threshold: float = REFUSAL_THRESHOLD,
    harm_rule: TokenRule = "after-first-sentence",
) -> list[dict[str, Any]]:
    """Monitor rows (id, prompt, response, label, harm_start, source) for the rollouts.

    The response is the prefill plus the continuation (what the monitor reads in context); the
    continuation alone is judged for refusal, and a harmful row's harm starts no earlier than the
    continuation (the forced prefill is the attacker's text, not the policy's). ``harm_rule``
    places the start inside the continuation: after its first sentence, or at its first token
    ("all": an opening that announces compliance, "Here's a step-by-step guide to <the request>",
    is already the answer a guard must stop).
    """
    kept = [r for r in rollouts if r.continuation.strip()]
    probs = refusal.probs([r.continuation for r in kept])
    rows = []
    for r, p in zip(kept, probs, strict=True):
        label = int(r.label == 1 and p < threshold)
        response = r.prefill + r.continuation
        start = harm_start(r.continuation, label, harm_rule)
        rows.append({
            "id": f"policy-{r.id}", "prompt": r.prompt, "response": response, "label": label,
            "harm_start": None if start is None else len(r.prefill) + start,
            "source": "policy-rollout", "teacher_refusal_prob": round(float(p), 4),
        })
    return rows


def save_teacher(judge: TextJudge, folder: str | os.PathLike[str]) -> Path:
    """Save the teacher's refusal judge beside the rows it labelled (its card says what it read)."""
    judge.card["teacher"] = TEACHER
    judge.save(folder)
    return Path(folder)
