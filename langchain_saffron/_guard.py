"""The guard helpers of the LangChain package, in one place.

The callback guard, the agent middleware and the rollout selector all read message text, judge text
with a streaming monitor, apply ``on_violation`` and mark what they blocked in
``response_metadata["saffron"]``; they do it here, so the three agree (and ChatSaffron's metadata
can be built by :func:`saffron_metadata` too).

Judging fails closed, as the monitors do: a monitor that raises gives a ``monitor-failed`` verdict
(:meth:`Verdict.monitor_failure`), never a silent pass.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from langchain_core.messages import AIMessage

from saffron_runtime.errors import (
    DEFAULT_REFUSAL,
    ConfigError,
    GuardrailViolation,
    OnViolation,
    Verdict,
)
from saffron_runtime.monitor.adapters import StreamingMonitor
from saffron_runtime.monitor.faults import open_session
from saffron_runtime.monitor.session import MonitorSession

__all__ = [
    "DEFAULT_REFUSAL",
    "blocked_message",
    "cleared_text",
    "enforce",
    "feed",
    "finish",
    "is_user_message",
    "judge_text",
    "last_user_message",
    "last_user_text",
    "message_text",
    "model_verdicts",
    "saffron_metadata",
    "verdict_from_dict",
    "violation",
]

_VERDICT_FIELDS = frozenset(inspect.signature(Verdict).parameters)


# ---------------------------------------------------------------------- message text
def require_monitor(monitor: Any) -> StreamingMonitor:
    """``monitor`` if it is a streaming monitor (has ``open(prompt)``), else a ConfigError naming the fix."""
    if not callable(getattr(monitor, "open", None)):
        raise ConfigError(
            f"the guard needs a streaming monitor (an object with open(prompt)), got "
            f"{type(monitor).__name__}; pass e.g. SCMMonitor(load_monitor('bundled'))"
        )
    return monitor


def message_text(message: Any) -> str:
    """The plain text of a LangChain message or a ``{"role", "content"}`` dict.

    String content is returned as is; from a list of content blocks, string blocks and the
    ``text`` of text blocks are joined and every other block (images, tool calls) is skipped,
    because a monitor judges words, not attachments.
    """
    content = message.get("content") if isinstance(message, Mapping) else message.content
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, str):
            parts.append(block)
        elif (
            isinstance(block, Mapping)
            and block.get("type", "text") == "text"
            and isinstance(block.get("text"), str)
        ):
            parts.append(block["text"])
    return "".join(parts)


def is_user_message(message: Any) -> bool:
    """True for a human message (``type == "human"``) or a dict with role ``user`` / ``human``."""
    if isinstance(message, Mapping):
        return message.get("role") in ("user", "human")
    return getattr(message, "type", None) == "human"


def last_user_message(messages: Sequence[Any]) -> Any | None:
    """The latest user message of a conversation, or None when it has none."""
    for message in reversed(messages):
        if is_user_message(message):
            return message
    return None


def last_user_text(messages: Sequence[Any]) -> str:
    """The text a monitor reads as the prompt: the latest user message ("" when there is none)."""
    last = last_user_message(messages)
    return message_text(last) if last is not None else ""


# ---------------------------------------------------------------------- judging
def _fail_closed(step: Callable[[], Verdict | None]) -> Verdict | None:
    """Run one monitor step; a fault becomes a ``monitor-failed`` verdict instead of an error."""
    try:
        return step()
    except GuardrailViolation as e:  # a monitor that raises our own error has judged already
        return e.verdict
    except Exception as e:  # noqa: BLE001 - any monitor fault must block, not pass or crash
        return Verdict.monitor_failure(f"{type(e).__name__}: {e}")


def feed(session: MonitorSession, text: str) -> Verdict | None:
    """``session.feed_text(text)``, failing closed."""
    return _fail_closed(lambda: session.feed_text(text))


def finish(session: MonitorSession) -> Verdict | None:
    """``session.finish()``, failing closed."""
    return _fail_closed(session.finish)


def judge_text(monitor: StreamingMonitor, prompt: str, text: str) -> Verdict | None:
    """Judge one whole text as a response to ``prompt`` in a fresh session (None when it is safe).

    Empty text is not judged. The session is opened, fed and finished inside the fail-closed
    step, so a monitor that cannot even read the prompt blocks too.
    """
    if not text:
        return None

    def step() -> Verdict | None:
        session = open_session(monitor, prompt)
        return session.feed_text(text) or session.finish()

    return _fail_closed(step)


# ---------------------------------------------------------------------- verdicts and errors
def verdict_from_dict(data: Mapping[str, Any]) -> Verdict:
    """Rebuild a :class:`Verdict` from :meth:`Verdict.to_dict` output (unknown keys are ignored)."""
    args = {k: v for k, v in data.items() if k in _VERDICT_FIELDS}
    if isinstance(args.get("span"), list):
        args["span"] = tuple(args["span"])
    return Verdict(**args)


def violation(verdict: Verdict, cleared: str) -> GuardrailViolation:
    """The error a streaming guard raises, carrying the text it had cleared before firing."""
    err = GuardrailViolation(verdict)
    err.cleared_text = cleared  # type: ignore[attr-defined]
    return err


def cleared_text(err: GuardrailViolation) -> str:
    """The text cleared before ``err`` fired ("" when the raiser did not say)."""
    return getattr(err, "cleared_text", "")


def enforce(verdict: Verdict, on_violation: OnViolation) -> None:
    """Raise :class:`GuardrailViolation` when ``on_violation`` is ``"raise"``; otherwise return."""
    if on_violation == "raise":
        raise GuardrailViolation(verdict)


# ---------------------------------------------------------------------- metadata
def saffron_metadata(
    verdicts: Iterable[Verdict | Mapping[str, Any]],
    *,
    blocked: bool = True,
    on_violation: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """``{"saffron": {"blocked", "on_violation", "verdicts", **extra}}`` for ``response_metadata``.

    ``on_violation`` is recorded only for a blocked message (it says what was done about the
    block); verdicts may be :class:`Verdict` objects or their dicts.

    Example: ``saffron_metadata([verdict], on_violation="refuse")["saffron"]["blocked"] is True``.
    """
    return {
        "saffron": {
            "blocked": blocked,
            "on_violation": on_violation if blocked else None,
            "verdicts": [v.to_dict() if isinstance(v, Verdict) else dict(v) for v in verdicts],
            **extra,
        }
    }


def blocked_message(
    text: str, verdicts: Sequence[Verdict | Mapping[str, Any]], on_violation: str, **extra: Any
) -> AIMessage:
    """The answer that replaces a blocked turn: ``text`` with no tool calls, marked blocked."""
    meta = saffron_metadata(verdicts, on_violation=on_violation, **extra)
    return AIMessage(content=text, response_metadata=meta)


def model_verdicts(message: AIMessage) -> tuple[bool, list[Verdict]] | None:
    """What a guarded model (ChatSaffron) recorded about its own output: (blocked, verdicts).

    None when the message carries no ``response_metadata["saffron"]`` judgement, so the caller
    must judge the text itself. A blocked message whose metadata lists no verdict still counts as
    blocked, with a verdict saying so.
    """
    meta = (message.response_metadata or {}).get("saffron")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("blocked"), bool):
        return None
    verdicts = [verdict_from_dict(v) for v in meta.get("verdicts") or [] if isinstance(v, Mapping)]
    if meta["blocked"] and not verdicts:
        verdicts = [
            Verdict(unsafe=True, rule="model", score=float("nan"), reason="the model blocked it")
        ]
    return meta["blocked"], verdicts
