"""How well a decoding method writes on benign prompts: repetition, the policy's own likelihood, length.

A safety method is only worth shipping if its answers to ordinary requests read like the model's own.
These are the measures the quality report puts beside the attack report:

* ``repeated_trigram_share``: the share of word 3-grams that repeat an earlier 3-gram of the same output
  (0 for text without repetition; word salad that loops scores near 1);
* ``longest_word_run``: the longest run of one word repeated back to back ("bear bear bear" = 3);
* ``nll_per_token``: the policy's mean negative log-likelihood of the output tokens given the prompt
  (what the model itself thinks of the text; sampling noise and reward-chasing both raise it);
* ``tokens``: output length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from saffron_runtime.models.loading import LoadedModel

_WORD = re.compile(r"\w+(?:'\w+)?", re.UNICODE)
RUN_LIMIT = 4
"""An output with one word repeated this many times in a row counts as degenerate."""


def words(text: str) -> list[str]:
    """Lower-cased words (letters, digits, inner apostrophes)."""
    return [w.lower() for w in _WORD.findall(text)]


def repeated_trigram_share(text: str) -> float:
    """Share of word 3-grams that already occurred earlier in the text (0 when it has fewer than 2)."""
    ws = words(text)
    grams = [tuple(ws[i : i + 3]) for i in range(len(ws) - 2)]
    if len(grams) < 2:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for g in grams:
        repeats += g in seen
        seen.add(g)
    return repeats / len(grams)


def longest_word_run(text: str) -> int:
    """Length of the longest run of one word repeated back to back (0 for empty text)."""
    best, run, prev = 0, 0, None
    for w in words(text):
        run = run + 1 if w == prev else 1
        prev = w
        best = max(best, run)
    return best


@torch.no_grad()
def nll_per_token(policy: LoadedModel, prompt_ids: Sequence[int], output_ids: Sequence[int]) -> float:
    """Mean negative log-likelihood of ``output_ids`` under the policy, given ``prompt_ids``."""
    if not output_ids:
        return float("nan")
    ids = torch.tensor([list(prompt_ids) + list(output_ids)], device=policy.model.device)
    logits = policy.model(input_ids=ids).logits[0, len(prompt_ids) - 1 : -1].float()
    logp = torch.log_softmax(logits, dim=-1)
    target = ids[0, len(prompt_ids) :]
    return float(-logp.gather(1, target[:, None]).mean())


@dataclass
class QualityRow:
    """The quality measures of one output."""

    repeated_trigram_share: float
    longest_word_run: int
    nll_per_token: float
    tokens: int
    refused: bool | None = None

    def to_dict(self) -> dict[str, float | int | bool | None]:
        """JSON-friendly copy."""
        return asdict(self)


def measure(
    policy: LoadedModel,
    prompt_ids: Sequence[int],
    output_ids: Sequence[int],
    text: str,
    refused: bool | None = None,
) -> QualityRow:
    """Every quality measure of one output."""
    return QualityRow(
        repeated_trigram_share=repeated_trigram_share(text),
        longest_word_run=longest_word_run(text),
        nll_per_token=nll_per_token(policy, prompt_ids, output_ids),
        tokens=len(output_ids),
        refused=refused,
    )


def summarise(rows: Sequence[QualityRow]) -> dict[str, float | int]:
    """Means over outputs, plus the count of outputs with a word repeated ``RUN_LIMIT`` times in a row."""
    if not rows:
        return {"n": 0}
    nll = [r.nll_per_token for r in rows if r.nll_per_token == r.nll_per_token]
    judged = [r.refused for r in rows if r.refused is not None]
    out: dict[str, float | int] = {
        "n": len(rows),
        "repeated_trigram_share": sum(r.repeated_trigram_share for r in rows) / len(rows),
        "runs_of_4": sum(r.longest_word_run >= RUN_LIMIT for r in rows),
        "longest_word_run_max": max(r.longest_word_run for r in rows),
        "nll_per_token": sum(nll) / len(nll) if nll else float("nan"),
        "tokens": sum(r.tokens for r in rows) / len(rows),
    }
    if judged:
        out["refusal_rate"] = sum(judged) / len(judged)
    return out
