"""Decision rules of the streaming monitor: when do per-token harm scores stop the stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from saffron_runtime.config import Settings

RuleName = Literal["delay-k", "k-consecutive", "response-threshold"]


class MonitorRule(Settings):
    """``delay-k``: stop once ``k`` tokens in total score >= ``theta`` (SCM). ``k-consecutive``: stop on
    ``k`` such tokens in a row (Qwen3Guard-Stream uses 2). ``response-threshold``: stop when the response
    head's score at the current token is >= ``theta``. ``head`` picks which head feeds the token rules
    (the SCM evaluation script scores every position with the response head)."""

    name: RuleName = "delay-k"
    theta: float = Field(0.5, ge=0.0, le=1.0)
    k: int = Field(1, ge=1, le=4096)
    head: Literal["token", "response"] = "token"


@dataclass
class RuleState:
    """Counters of one stream under one rule."""

    rule: MonitorRule
    total: int = 0
    run: int = 0

    def update(self, token_score: float, response_score: float) -> tuple[bool, float]:
        """Account one token; return (fired, the score that decided)."""
        r = self.rule
        if r.name == "response-threshold":
            return response_score >= r.theta, response_score
        s = token_score if r.head == "token" else response_score
        if s >= r.theta:
            self.total += 1
            self.run += 1
        else:
            self.run = 0
        hit = self.total >= r.k if r.name == "delay-k" else self.run >= r.k
        return hit, s
