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


KEY_REFERENCE: dict[str, Any] = {
    "top_p": 0.8,
    "temperature": 1.0,
    "min_new_tokens": 1,
    "safe_threshold": 0.0,
    "logprob_weight": 1.0,
    "unsafe_logprob_weight": 0.0,
    "no_repeat_ngram_size": 0,
    "repetition_penalty": 1.0,
    "unseen_reward": -1024.0,
    "unseen_from_parent": False,
    "unseen_siblings_cap": False,
    "within_prefix_weight": 1.0,
    "prm_children": 4,
    "faithful": False,
    "prune_flagged_beams": False,
    "stop": [],
}
"""The search settings every key in the ledger so far was generated with. A key records each setting
its method reads whose value differs from these, so a changed default regenerates exactly the outputs
it changes while the keys already in the ledger stay valid. A new search setting must be added here
with the value the existing outputs had (a test fails otherwise)."""
KEYED_ELSEWHERE: frozenset[str] = frozenset(
    {"method", "budget", "num_samples", "max_new_tokens", "seed", "objective", "max_commit_lag"}
)
"""Settings the key holds by the grid point itself (method, budget, run settings, the saffron row's
objective and commit lag)."""
# frontier ranking (Saffron, PRM beam); the MRM's unseen mask (Saffron); sampling and PRM children
_FRONTIER = frozenset(
    {"safe_threshold", "logprob_weight", "unsafe_logprob_weight", "faithful", "prune_flagged_beams"}
)
_MRM_MASK = frozenset(
    {"unseen_reward", "unseen_from_parent", "unseen_siblings_cap", "within_prefix_weight"}
)
_NOT_SEARCH = frozenset({"temperature", "prm_children"})
NOT_READ: dict[str, frozenset[str]] = {
    "unguarded": _FRONTIER | _MRM_MASK | _NOT_SEARCH | {"top_p"},
    "best_of_n": _FRONTIER | _MRM_MASK | {"prm_children"},
    "prm_beam": _MRM_MASK | {"temperature"},
    "saffron": _NOT_SEARCH,
    "saffron_reward": _NOT_SEARCH,
}
"""Settings a method's output does not depend on: a change to them keeps its cached outputs."""


OBJECTIVE_READS: dict[str, str] = {
    "safe_threshold": "safe_likelihood",
    "unsafe_logprob_weight": "safe_likelihood",
    "logprob_weight": "reward_plus_logprob",
}
"""Settings only one objective reads: under any other objective they change no output."""


def changed_settings(method: str, cfg: SearchConfig) -> dict[str, Any]:
    """The settings ``method`` reads whose value in ``cfg`` differs from :data:`KEY_REFERENCE`."""
    values = cfg.model_dump()
    unread = NOT_READ[method] | {
        name for name, objective in OBJECTIVE_READS.items() if cfg.objective != objective
    }
    if cfg.faithful:
        unread |= {"unseen_from_parent", "unseen_siblings_cap", "within_prefix_weight"}
    if not cfg.unseen_from_parent:
        unread |= {"unseen_siblings_cap"}
    if cfg.within_prefix_weight < 1.0:  # unseen children take their siblings' mean instead
        unread |= {"unseen_reward", "unseen_from_parent", "unseen_siblings_cap"}
    return {
        name: values[name]
        for name, ref in KEY_REFERENCE.items()
        if name not in unread and values[name] != ref
    }


@dataclass(frozen=True)
class MethodSpec:
    """One point of the grid: a method and its budget (for Best-of-N, ``budget`` is N)."""

    method: str
    budget: int

    def key_fields(self) -> dict[str, Any]:
        """What the cache key records of the method: its published name, plus the settings that
        differ from the first published run's (so the paper's ranking keeps that run's keys), plus
        every setting the method reads that differs from :data:`KEY_REFERENCE`."""
        cfg = self.search_config(1, 0)
        if self.method == "saffron_reward":
            fields: dict[str, Any] = {"method": "saffron"}
        elif self.method == "saffron":
            fields = {
                "method": "saffron",
                "objective": cfg.objective,
                "commit_lag": cfg.max_commit_lag,
            }
        else:
            fields = {"method": self.method}
        return {**fields, **changed_settings(self.method, cfg)}

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
        return SearchConfig(  # the paper's reward ranking on raw rewards, conservative exploration, no pruning
            method="saffron" if self.method == "saffron_reward" else self.method,  # type: ignore[arg-type]
            budget=self.budget,
            max_new_tokens=max_new_tokens,
            seed=seed,
            objective="reward",
            max_commit_lag=None,
            unseen_from_parent=False,
            within_prefix_weight=1.0,
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
