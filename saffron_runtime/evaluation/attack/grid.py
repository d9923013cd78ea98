"""The grid of an attack evaluation: which methods at which budgets, and the run-wide settings that,
besides the prompt and the grid point, change an output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from saffron_runtime.errors import ConfigError
from saffron_runtime.search.config import SearchConfig

AttackMethod = Literal["unguarded", "best_of_n", "prm_beam", "saffron", "saffron_reward"]
METHODS: tuple[str, ...] = ("unguarded", "best_of_n", "prm_beam", "saffron", "saffron_reward")
"""``saffron`` is ChatSaffron's default search (its default objective and commit lag); ``saffron_reward``
the paper's ranking by reward alone, as the first published run had it (then named ``saffron``)."""
MRM_METHODS: tuple[str, ...] = ("saffron", "saffron_reward")
"""The methods whose output depends on the MRM (a retrained MRM regenerates only these)."""


@dataclass(frozen=True)
class MethodSpec:
    """One point of the grid: a method and its budget (for Best-of-N, ``budget`` is N)."""

    method: str
    budget: int

    def key_fields(self) -> dict[str, Any]:
        """What the cache key records of the method: its published name, plus the settings that
        differ from the first published run's (so the paper's ranking keeps that run's keys)."""
        if self.method == "saffron_reward":
            return {"method": "saffron"}
        if self.method == "saffron":
            cfg = self.search_config(1, 0)
            return {"method": "saffron", "objective": cfg.objective, "commit_lag": cfg.max_commit_lag}
        return {"method": self.method}

    def search_config(self, max_new_tokens: int, seed: int) -> SearchConfig:
        """The engine settings of this point (unguarded = greedy decoding)."""
        if self.method == "unguarded":
            return SearchConfig(method="greedy", max_new_tokens=max_new_tokens, seed=seed)
        if self.method == "best_of_n":  # as the issue fixes it: temperature 1, top_p 0.8
            return SearchConfig(
                method="best_of_n",
                num_samples=self.budget,
                temperature=1.0,
                top_p=0.8,
                max_new_tokens=max_new_tokens,
                seed=seed,
            )
        if self.method == "saffron":  # what a ChatSaffron user gets at this budget
            return SearchConfig(
                method="saffron", budget=self.budget, max_new_tokens=max_new_tokens, seed=seed
            )
        return SearchConfig(  # the paper's reward ranking, no commit-lag pruning (prm_beam's too)
            method="saffron" if self.method == "saffron_reward" else self.method,  # type: ignore[arg-type]
            budget=self.budget,
            max_new_tokens=max_new_tokens,
            seed=seed,
            objective="reward",
            max_commit_lag=None,
        )


def method_grid(
    methods: Sequence[str], budgets: Sequence[int], bon_n: Sequence[int] | None = None
) -> list[MethodSpec]:
    """Every (method, budget); unguarded greedy decoding has no budget and runs once (budget 1)."""
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"--methods: unknown {bad}; choose from {', '.join(METHODS)}")
    if not budgets or any(b < 1 for b in budgets):
        raise ConfigError(f"--budgets {list(budgets)}: give positive integers, e.g. 2,4,8")
    grid = []
    for m in methods:
        if m == "unguarded":
            grid.append(MethodSpec(m, 1))
            continue
        for b in bon_n if (m == "best_of_n" and bon_n) else budgets:
            if b < 1:
                raise ConfigError(f"--bon-n {list(bon_n or [])}: give positive integers")
            grid.append(MethodSpec(m, int(b)))
    return grid


@dataclass
class AttackSettings:
    """Everything besides the prompt and the grid point that changes an output."""

    prefill: int = 0
    max_new_tokens: int = 50
    seed: int = 0
    reward_sees_prefill: bool = False
    judges_see_prefill: bool = False

    def __post_init__(self) -> None:
        if self.prefill < 0:
            raise ConfigError(f"--prefill {self.prefill}: must be 0 (no attack) or more tokens")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens {self.max_new_tokens}: must be at least 1")
