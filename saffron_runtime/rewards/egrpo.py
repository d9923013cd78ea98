"""E-GRPO rewards and GRPO group advantages (DESIGN 1.3).

For a group of G rollouts of one question: ``gamma_i = |matched(i)| / |gold|``,
``gamma_hat_i = gamma_i / max_j gamma_j`` (0 if the max is 0); reward ``R_i = 1`` if correct,
``alpha * gamma_hat_i`` if wrong, ``0`` on a format error or overlength. Advantages
``(R_i - mean R) / std R``; overlength rollouts count in mean and std but are masked out of the loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from saffron_runtime.errors import ConfigError
from saffron_runtime.rewards.entities import MatchOptions, match_rate


def _is_flag(item: Any) -> bool:
    """A bool, 0 / 1, or a NumPy / Torch boolean scalar: anything but ``None`` or a string."""
    if isinstance(item, bool):
        return True
    if isinstance(item, int):
        return item in (0, 1)
    return getattr(item, "ndim", None) == 0 and "bool" in str(getattr(item, "dtype", ""))


def _sequence(name: str, value: Any, kind: Any, what: str) -> list[Any]:
    """``value`` as a list of ``kind``; a :class:`ConfigError` naming the argument otherwise."""
    if value is None or isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ConfigError(
            f"{name} must be a list of {what}, got {type(value).__name__}"
        )
    for i, item in enumerate(value):
        if not (kind(item) if callable(kind) and not isinstance(kind, type) else isinstance(item, kind)):
            raise ConfigError(
                f"{name}[{i}] is {item!r} ({type(item).__name__}); {name} holds {what}"
            )
    return list(value)


def normalised_rates(rates: Sequence[float]) -> list[float]:
    """gamma_hat: each rate over the group's maximum (all 0 when the maximum is 0)."""
    top = max(rates, default=0.0)
    return [r / top if top > 0 else 0.0 for r in rates]


def egrpo_rewards(
    thoughts: Sequence[str],
    entities: Sequence[str],
    correct: Sequence[bool],
    *,
    alpha: float = 0.3,
    errors: Sequence[bool] | None = None,
    options: MatchOptions | None = None,
) -> list[float]:
    """Rewards of one group: 1 if correct, ``alpha * gamma_hat`` if wrong, 0 on an error/overlength.

    Every list is checked first: ``None`` or a flag that is not a bool (``[None]``) is a
    :class:`ConfigError`, not a silent 0 (an unchecked answer must not read as a wrong one).
    An empty group gives ``[]``.
    """
    thoughts = _sequence("thoughts", thoughts, str, "strings (the rollouts' thoughts, one per rollout)")
    entities = _sequence("entities", entities, str, "strings (the gold entities)")
    correct = _sequence("correct", correct, _is_flag, "bools (was each final answer right, one per rollout)")
    if errors is not None:
        errors = _sequence("errors", errors, _is_flag, "bools (format error or overlength)")
    n = len(thoughts)
    if len(correct) != n:
        raise ConfigError(
            f"correct has {len(correct)} flags but there are {n} rollouts; give one per rollout"
        )
    if errors is not None and len(errors) != n:
        raise ConfigError(
            f"errors has {len(errors)} flags but there are {n} rollouts; give one per rollout"
        )
    if not [e for e in entities if e]:
        raise ConfigError(
            "the gold entity list is empty: E-GRPO rewards need at least one gold entity per question"
        )
    if not 0.0 <= alpha <= 1.0 or math.isnan(alpha):
        raise ConfigError(f"alpha={alpha} must be in [0, 1] (the paper uses 0.3; 0.5 hurt)")
    errs = list(errors) if errors is not None else [False] * n
    rates = [match_rate(t, entities, options) for t in thoughts]
    hat = normalised_rates(rates)
    return [
        0.0 if e else 1.0 if c else alpha * h for c, e, h in zip(correct, errs, hat, strict=True)
    ]


def grpo_advantages(
    rewards: Sequence[float], overlength: Sequence[bool] | None = None, *, eps: float = 1e-6
) -> tuple[list[float], list[bool]]:
    """(advantages, in_loss): group-normalised rewards; overlength rollouts count in the statistics
    but ``in_loss`` is False for them. A zero std gives zero advantages."""
    n = len(rewards)
    if n == 0:
        return [], []
    over = list(overlength) if overlength is not None else [False] * n
    if len(over) != n:
        raise ConfigError(f"overlength has {len(over)} flags but there are {n} rewards")
    mean = sum(rewards) / n
    std = math.sqrt(sum((r - mean) ** 2 for r in rewards) / n)
    adv = [0.0 if std < eps else (r - mean) / std for r in rewards]
    return adv, [not o for o in over]
