"""Monitor faults, handled in one place: what counts as a usable score, and what a guard does when a
monitor gives none.

A monitor fails when its scorer raises, times out, or returns a score that is not a finite number
(NaN or inf: a model in the wrong dtype, corrupt weights, a moderation API's garbage). Every score a
monitor produces passes :func:`checked_score`, and every fault goes through :func:`fault_verdict`:
fail closed (the default) gives a ``monitor-failed`` verdict that stops the stream; ``fail_open=True``
logs a warning and lets the rest of that stream through unjudged.

:func:`open_session` is how a guard (guarded generation, the callback, the middleware) opens a session
on *any* monitor, ours or a user's: the returned :class:`FailSafeSession` never raises, so a monitor's
fault is always a verdict, never a bare error that a caller might swallow.
"""

from __future__ import annotations

import codecs
import logging
import math
import re
from collections.abc import Iterable
from typing import Any

from saffron_runtime.errors import GuardrailViolation, SaffronError, Verdict

log = logging.getLogger("saffron_runtime.monitor")
_SURROGATE = re.compile("[\ud800-\udfff]")


class MonitorFault(SaffronError):
    """A monitor gave no usable score (it returned NaN, inf or a non-number)."""


def checked_score(value: Any, source: str) -> float:
    """``value`` as a float; :class:`MonitorFault` when it is not a finite number."""
    try:
        score = float(value)
    except (TypeError, ValueError) as e:
        raise MonitorFault(
            f"{source} returned {value!r}, not a number; a monitor must return a harm "
            "probability in [0, 1] (or a bool)"
        ) from e
    if not math.isfinite(score):
        raise MonitorFault(
            f"{source} returned {score}, not a finite harm score; check the scorer (NaN often "
            "means a model run in a dtype it overflows in, or corrupt weights)"
        )
    return score


def checked_scores(values: Iterable[Any], source: str) -> list[float]:
    """:func:`checked_score` on each value."""
    return [checked_score(v, source) for v in values]


def encodable(text: str) -> str:
    """``text`` with lone surrogates (``'\\ud800'``: not valid Unicode, so no tokenizer or UTF-8 writer
    accepts them) replaced by U+FFFD, as a UTF-8 decoder would; other text is returned unchanged."""
    return _SURROGATE.sub("\ufffd", text)


def fault_verdict(
    error: BaseException, *, name: str, fail_open: bool, position: int | None = None
) -> Verdict | None:
    """The one fault policy: a ``monitor-failed`` verdict, or (``fail_open``) a logged warning and None.

    A monitor that raises our own :class:`GuardrailViolation` has judged, not failed: its verdict stands.
    """
    if isinstance(error, GuardrailViolation):
        return error.verdict
    why = f"{type(error).__name__}: {error}"
    if fail_open:
        log.warning("monitor %s failed open, the stream goes on unjudged: %s", name, why)
        return None
    return Verdict.monitor_failure(why, position=position)


class FailSafeSession:
    """Wraps any monitor session so that a fault becomes a verdict (or, failing open, a pass-through).

    Until a fault it only forwards; after a fail-open fault it releases everything it was fed.
    Attributes it does not define are read from the wrapped session.
    """

    def __init__(self, inner: Any, *, name: str, fail_open: bool) -> None:
        self.inner = inner
        self.name = name
        self.fail_open = fail_open
        self.passing = inner is None  # a fail-open fault happened: judge nothing more
        self._verdict: Verdict | None = None
        self._text = ""
        self._released = 0
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __getattr__(self, item: str) -> Any:
        inner = self.__dict__.get("inner")
        if inner is None:
            raise AttributeError(item)
        return getattr(inner, item)

    @property
    def verdict(self) -> Verdict | None:
        """The verdict so far (the wrapped session's, or the fault's)."""
        if self._verdict is not None or self.passing:
            return self._verdict
        return getattr(self.inner, "verdict", None)

    def _fault(self, error: BaseException) -> Verdict | None:
        self._verdict = fault_verdict(error, name=self.name, fail_open=self.fail_open)
        self.passing = self._verdict is None
        return self._verdict

    def _step(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as e:  # noqa: BLE001 - any monitor fault is a verdict by policy
            return self._fault(e)

    def feed_text(self, text: str | bytes) -> Verdict | None:
        """Forward ``text``; a fault gives a verdict (or passes, failing open)."""
        if self._verdict is not None:
            return self._verdict
        self._text += encodable(self._utf8.decode(text) if isinstance(text, bytes) else text)
        if self.passing:
            return None
        return self._step(self.inner.feed_text, text)

    def finish(self) -> Verdict | None:
        """Forward the end of the stream."""
        self._text += encodable(self._utf8.decode(b"", final=True))
        if self._verdict is not None or self.passing:
            return self._verdict
        return self._step(self.inner.finish)

    def _take(self, fn_name: str) -> str:
        if self.passing:
            out = self._text[self._released :]
        elif self._verdict is not None:  # a fault blocked: nothing more is cleared
            return ""
        else:
            fn = getattr(self.inner, fn_name, None) or self.inner.release
            out = self._step(fn)
            if not isinstance(out, str):  # the release itself failed
                return ""
        self._released += len(out)
        return out

    def release(self) -> str:
        """Text cleared since the last call."""
        return self._take("release")

    def release_all(self) -> str:
        """After a clean finish: everything not yet released."""
        return self._take("release_all")


def open_session(monitor: Any, prompt: str) -> FailSafeSession:
    """Open a session on any monitor for ``prompt``, failing closed (or open, per the monitor's
    ``fail_open``) when even opening it fails."""
    name = getattr(monitor, "name", None) or type(monitor).__name__
    fail_open = bool(getattr(monitor, "fail_open", False))
    try:
        inner = monitor.open(prompt)
    except Exception as e:  # noqa: BLE001 - a monitor that cannot start must block, not crash
        session = FailSafeSession(None, name=name, fail_open=fail_open)
        session.passing = False
        session._fault(e)
        return session
    return FailSafeSession(inner, name=name, fail_open=fail_open)
