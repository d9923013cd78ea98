"""The prompt head as a request filter: choose its threshold on validation prompts, measure it on test.

The threshold is the lowest one whose false-positive rate on the benign validation prompts stays at
or below ``max_fpr`` (over-refusal is what a request filter must not do); recall on harmful prompts and
the false-positive rate on XSTest's safe prompts (which look harmful on the surface) are reported.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from saffron_runtime.errors import DataError
from saffron_runtime.monitor.model import SCMMonitorModel


class LabelledPrompt(BaseModel):
    """A request with its label (1 = harmful) and where it came from."""

    prompt: str
    label: int = Field(ge=0, le=1)
    source: str = ""


def prompt_scores(monitor: SCMMonitorModel, prompts: Sequence[LabelledPrompt]) -> list[float]:
    """P(harmful request) for every prompt."""
    if monitor.prompt_head is None:
        raise DataError("this monitor has no prompt head; train it with --prompt-data")
    return [monitor.prompt_score(p.prompt) for p in prompts]


def choose_prompt_theta(
    scores: Sequence[float], labels: Sequence[int], *, max_fpr: float = 0.1
) -> float:
    """Lowest threshold (among the scores, plus 1.0) whose benign false-positive rate <= ``max_fpr``."""
    benign = sorted(s for s, y in zip(scores, labels, strict=True) if y == 0)
    if not benign:
        raise DataError("no benign prompts to calibrate the prompt head on")
    for theta in sorted(set(scores)) + [1.0]:
        if sum(s >= theta for s in benign) / len(benign) <= max_fpr:
            return float(theta)
    return 1.0


def prompt_metrics(
    scores: Sequence[float], prompts: Sequence[LabelledPrompt], theta: float
) -> dict[str, float]:
    """Recall on harmful prompts, false-positive rate on benign ones and on XSTest's safe ones."""

    def rate(keep: list[bool]) -> float:
        picked = [s >= theta for s, k in zip(scores, keep, strict=True) if k]
        return sum(picked) / len(picked) if picked else float("nan")

    return {
        "theta": theta,
        "recall_harmful": rate([p.label == 1 for p in prompts]),
        "fpr_benign": rate([p.label == 0 for p in prompts]),
        "fpr_xstest_safe": rate([p.label == 0 and p.source == "xstest" for p in prompts]),
        "n_harmful": float(sum(p.label == 1 for p in prompts)),
        "n_benign": float(sum(p.label == 0 for p in prompts)),
    }
