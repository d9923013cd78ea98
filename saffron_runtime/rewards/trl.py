"""E-GRPO as a reward function with TRL's GRPO signature: ``f(prompts, completions, **kwargs) -> list[float]``.

TRL passes a flat batch in which each prompt's ``num_generations`` completions are consecutive, and
every dataset column as a keyword list aligned with the batch. This function groups completions by
identical prompt (consecutive runs), so gamma_hat is normalised within each prompt's group. TRL itself
is not a dependency: only its calling convention is followed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from saffron_runtime.rewards.egrpo import egrpo_rewards
from saffron_runtime.rewards.entities import MatchOptions
from saffron_runtime.rewards.thoughts import extract_thoughts

AnswerChecker = Callable[[str, Any], "bool | tuple[bool, bool]"]
"""``checker(final_answer, gold) -> correct`` or ``(correct, format_error)``."""


def _completion_text(c: Any) -> str | list[Any]:
    return c if isinstance(c, str) else list(c)  # conversational: a list of message dicts


def _final_answer(c: Any) -> str:
    if isinstance(c, str):
        return c.split("</think>")[-1]
    msgs = [
        m
        for m in c
        if (m.get("role") if isinstance(m, dict) else getattr(m, "type", "")) in ("assistant", "ai")
    ]
    last = msgs[-1] if msgs else {}
    content = last.get("content", "") if isinstance(last, dict) else getattr(last, "content", "")
    return str(content).split("</think>")[-1]


def default_checker(answer: str, gold: Any) -> bool:
    """Correct when a gold answer (or any of a list of them) appears in the final answer, case-folded."""
    golds = gold if isinstance(gold, (list, tuple)) else [gold]
    return any(str(g).casefold() in answer.casefold() for g in golds)


def make_egrpo_reward_func(
    *,
    alpha: float = 0.3,
    entities_key: str = "entities",
    answer_key: str = "answer",
    checker: AnswerChecker = default_checker,
    max_completion_chars: int | None = None,
    options: MatchOptions | None = None,
) -> Callable[..., list[float]]:
    """A TRL-compatible reward function; dataset columns ``entities_key`` and ``answer_key`` are read from kwargs."""

    def egrpo_reward(
        prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any
    ) -> list[float]:
        ents, golds = kwargs[entities_key], kwargs[answer_key]
        keys = [json.dumps(p, sort_keys=True, default=str) for p in prompts]
        out: list[float] = [0.0] * len(completions)
        start = 0
        while start < len(completions):
            end = start
            while end < len(completions) and keys[end] == keys[start]:
                end += 1
            group = range(start, end)
            texts = [_completion_text(completions[i]) for i in group]
            thoughts = [extract_thoughts(t) for t in texts]
            answers = [_final_answer(completions[i]) for i in group]
            verdicts = [checker(a, golds[i]) for a, i in zip(answers, group, strict=True)]
            correct = [bool(v[0]) if isinstance(v, tuple) else bool(v) for v in verdicts]
            format_errors = [bool(v[1]) if isinstance(v, tuple) else False for v in verdicts]
            errors = [
                fe or (max_completion_chars is not None and len(str(t)) > max_completion_chars)
                for fe, t in zip(format_errors, texts, strict=True)
            ]
            rewards = egrpo_rewards(
                thoughts, ents[start], correct, alpha=alpha, errors=errors, options=options
            )
            out[start:end] = rewards
            start = end
        return out

    egrpo_reward.__name__ = "egrpo_reward"
    return egrpo_reward
