"""The one place where Saffron's errors, verdicts and violation vocabulary are defined.

Every guard in both packages raises :class:`GuardrailViolation` carrying a :class:`Verdict`, and
every component that can block takes ``on_violation`` from :data:`OnViolation`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

OnViolation = Literal["raise", "refuse", "truncate"]
"""What a guard does when harm is detected: raise, answer with a refusal, or return the cleared prefix."""

ON_VIOLATION_CHOICES: tuple[str, ...] = get_args(OnViolation)

DEFAULT_REFUSAL = "I can't help with that."


class SaffronError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(SaffronError, ValueError):
    """An invalid setting; the message names the field, the allowed values and the fix."""


class ModelLoadError(SaffronError):
    """A model, adapter or tokenizer could not be loaded; the message says why and what to do."""


class TokenizerMismatchError(SaffronError):
    """Policy and reward model (or monitor) tokenizers differ and no mapping was given."""


class PromptError(SaffronError, ValueError):
    """A prompt is empty, unrenderable or longer than the model's context."""


class DataError(SaffronError, ValueError):
    """A data file is malformed; the message names the file, the line and what is wrong."""


class SearchCancelled(SaffronError):
    """A long operation saw its stop event and ended early."""


@dataclass(frozen=True)
class Verdict:
    """A guard's judgement on one stream, prompt or response.

    ``rule`` names the rule that fired (``"delay-k"``, ``"k-consecutive"``, ``"response-threshold"``,
    ``"backstop"``, ``"prompt"``, ``"monitor-failed"`` ...); ``position`` is the index of the token at
    which it fired (counted in the monitor's tokens of the response) and ``span`` the character span
    of the response text that the firing token covers.
    """

    unsafe: bool
    rule: str
    score: float
    position: int | None = None
    span: tuple[int, int] | None = None
    text: str = ""
    reason: str = ""
    monitor_failed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly copy, for ``response_metadata`` and logs."""
        d = asdict(self)
        if d["span"] is not None:
            d["span"] = list(d["span"])
        return d

    @classmethod
    def monitor_failure(cls, reason: str, *, position: int | None = None) -> Verdict:
        """The verdict a fail-closed guard returns when its scorer raised or timed out."""
        return cls(
            unsafe=True,
            rule="monitor-failed",
            score=float("nan"),
            position=position,
            reason=f"monitor failed: {reason}",
            monitor_failed=True,
        )


class GuardrailViolation(SaffronError):
    """Raised by every guard when harm is detected (or the monitor failed closed)."""

    def __init__(self, verdict: Verdict, message: str | None = None) -> None:
        self.verdict = verdict
        if message is None:
            where = f" at token {verdict.position}" if verdict.position is not None else ""
            why = f": {verdict.reason}" if verdict.reason else ""
            message = f"guardrail violation ({verdict.rule}{where}, score={verdict.score:.4g}){why}"
        super().__init__(message)


def validate_on_violation(value: str) -> OnViolation:
    """Check an ``on_violation`` value and return it typed; raise a :class:`ConfigError` otherwise."""
    if value not in ON_VIOLATION_CHOICES:
        raise ConfigError(
            f"on_violation={value!r} is not valid; use one of {', '.join(ON_VIOLATION_CHOICES)}"
        )
    return value  # type: ignore[return-value]
