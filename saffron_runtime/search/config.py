"""Search settings (one model for every method; each field says which methods read it)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from saffron_runtime.config import Settings
from saffron_runtime.models.mrm import UNSEEN_REWARD

Method = Literal["saffron", "best_of_n", "prm_beam", "greedy"]


class SearchConfig(Settings):
    """How to decode.

    ``temperature`` affects only the sampling baselines (Best-of-N); Saffron ranks candidates by
    reward and never samples, so a temperature of 0 (as LangChain's standard tests pass) does not
    turn it into greedy decoding. ``min_new_tokens`` bans EOS for that many tokens (the reference
    code used 16 for its evaluation; our default is 1 so short chat answers stay short).
    """

    method: Method = "saffron"
    budget: int = Field(4, ge=1, le=256, description="frontier width (saffron, prm_beam)")
    num_samples: int = Field(8, ge=1, le=1024, description="N of Best-of-N")
    prm_children: int = Field(4, ge=1, le=256, description="children per node for PRM beam search")
    top_p: float = Field(0.8, gt=0.0, le=1.0, description="nucleus of the policy (temperature 1)")
    temperature: float = Field(
        1.0, ge=0.0, le=10.0, description="sampling temperature of Best-of-N"
    )
    max_new_tokens: int = Field(50, ge=1, le=8192)
    min_new_tokens: int = Field(1, ge=0, le=8192)
    faithful: bool = Field(False, description="reproduce the reference code's quirks")
    stop: list[str] = Field(default_factory=list, description="strings that end a beam as EOS does")
    max_commit_lag: int | None = Field(
        None, ge=1, le=8192, description="streaming: prune when the frontier runs this far ahead"
    )
    unseen_reward: float = Field(UNSEEN_REWARD, description="reward of never-supervised tokens")
    seed: int = 0
