"""A guard for any LangChain chat model: a callback handler that feeds streamed tokens to a
streaming monitor and raises :class:`GuardrailViolation` the moment the rule fires.

Attach it through ``config["callbacks"]`` (per call), not the model constructor: LangChain runs
config handlers before LangGraph's message-streaming handler, so with ``run_inline=True`` and
``raise_error=True`` the firing chunk never reaches a consumer. Attached to the constructor it runs
after that handler and the firing chunk leaks (a test keeps this warning true).

A callback cannot hold text back: it stops at the firing token, so earlier tokens are already out.
Hold-back (releasing only text the monitor has cleared) lives in ChatSaffron and in the agent
middleware. Each run gets its own monitor session and stop signal, keyed by ``run_id``. The signal
is a :class:`threading.Event` set the moment the guard fires for that run (and for no other): a local
model that polls :meth:`~SaffronGuardCallbackHandler.stop_event` from its generation loop stops
computing instead of running on after its consumer is gone. A monitor that fails mid-stream fails
closed: the run stops with a ``monitor-failed`` verdict.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.messages import BaseMessage
from langchain_core.outputs import LLMResult

from langchain_saffron._guard import (
    feed,
    finish,
    last_user_message,
    message_text,
    require_monitor,
    violation,
)
from saffron_runtime.errors import Verdict
from saffron_runtime.monitor.adapters import StreamingMonitor
from saffron_runtime.monitor.faults import open_session
from saffron_runtime.monitor.session import MonitorSession


@dataclass
class _RunState:
    session: MonitorSession
    stop: threading.Event = field(default_factory=threading.Event)
    text: str = ""


def _prompt_of(messages: list[list[BaseMessage]]) -> str:
    """The text the monitor reads as the prompt: the last human message of the conversation (the
    last message when there is no human one)."""
    flat = messages[0] if messages else []
    last = last_user_message(flat)
    if last is None:
        last = flat[-1] if flat else None
    return message_text(last) if last is not None else ""


class _GuardCore:
    """Shared state and logic of the sync and async handlers."""

    def __init__(self, monitor: StreamingMonitor, *, backstop: bool = True) -> None:
        self.monitor = require_monitor(monitor)
        self.backstop = backstop
        self._runs: dict[UUID, _RunState] = {}
        self._lock = threading.Lock()
        self.verdicts: dict[UUID, Verdict] = {}

    def stop_event(self, run_id: UUID) -> threading.Event:
        """The stop signal of run ``run_id``: set when this guard fires for that run, never for another.

        The same event serves the run from ``on_chat_model_start`` (or ``on_llm_start``) to its end,
        so a model fetches it once when it starts generating (``run_manager.run_id`` in
        ``_generate``) and hands it to the loop or thread that computes, which polls it between
        steps. A run this guard is not watching gets a fresh event that is never set.
        (langchain-core's ``stream()`` passes ``_stream`` no run manager; there the guard's error
        closes the generator instead, which stops a model that cleans up in ``finally``.)
        """
        with self._lock:
            state = self._runs.get(run_id)
        return state.stop if state else threading.Event()

    def _open(self, run_id: UUID, prompt: str) -> None:
        state = _RunState(open_session(self.monitor, prompt))
        with self._lock:
            self._runs[run_id] = state

    def _state(self, run_id: UUID) -> _RunState | None:
        with self._lock:
            return self._runs.get(run_id)

    def _fire(
        self, run_id: UUID, state: _RunState, verdict: Verdict, cleared: str | None = None
    ) -> None:
        state.stop.set()
        self.verdicts[run_id] = verdict
        raise violation(verdict, state.text if cleared is None else cleared)

    def _token(self, token: str, run_id: UUID) -> None:
        state = self._state(run_id)
        if state is None or not token:
            return
        before = state.text
        state.text += token
        verdict = feed(state.session, token)
        if verdict is not None:
            self._fire(run_id, state, verdict, cleared=before)

    def _end(self, response: LLMResult, run_id: UUID) -> None:
        state = self._state(run_id)
        if state is None:
            return
        try:
            if self.backstop:
                full = (
                    response.generations[0][0].text
                    if response.generations and response.generations[0]
                    else ""
                )
                if full.startswith(state.text) and len(full) > len(state.text):
                    # the part that was not streamed: check it all
                    verdict = feed(state.session, full[len(state.text) :])
                    if verdict is not None:
                        self._fire(run_id, state, verdict)
                verdict = finish(state.session)
                if verdict is not None:
                    self._fire(run_id, state, verdict)
        finally:
            with self._lock:
                self._runs.pop(run_id, None)

    def _error(self, run_id: UUID) -> None:
        with self._lock:
            self._runs.pop(run_id, None)


class SaffronGuardCallbackHandler(_GuardCore, BaseCallbackHandler):
    """Sync guard: ``raise_error`` and ``run_inline`` so a violation propagates before the chunk is yielded."""

    raise_error: bool = True
    run_inline: bool = True

    def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        """Open this run's monitor session with the conversation's prompt."""
        self._open(run_id, _prompt_of(messages))

    def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Plain LLMs: the prompt string."""
        self._open(run_id, prompts[0] if prompts else "")

    def on_llm_new_token(self, token: str, *, run_id: UUID, **kwargs: Any) -> None:
        """Feed the monitor; raise GuardrailViolation and set the run's stop signal when it fires."""
        self._token(token, run_id)

    def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Full-text backstop (covers non-streamed output), then forget the run."""
        self._end(response, run_id)

    def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Forget the run."""
        self._error(run_id)


class AsyncSaffronGuardCallbackHandler(_GuardCore, AsyncCallbackHandler):
    """Async twin for async runs (an async handler inside a sync run is swallowed by LangChain)."""

    raise_error: bool = True
    run_inline: bool = True

    async def on_chat_model_start(
        self,
        serialized: dict[str, Any],
        messages: list[list[BaseMessage]],
        *,
        run_id: UUID,
        **kwargs: Any,
    ) -> None:
        """Open this run's monitor session."""
        self._open(run_id, _prompt_of(messages))

    async def on_llm_start(
        self, serialized: dict[str, Any], prompts: list[str], *, run_id: UUID, **kwargs: Any
    ) -> None:
        """Plain LLMs: the prompt string."""
        self._open(run_id, prompts[0] if prompts else "")

    async def on_llm_new_token(self, token: str, *, run_id: UUID, **kwargs: Any) -> None:
        """Feed the monitor; raise when it fires."""
        self._token(token, run_id)

    async def on_llm_end(self, response: LLMResult, *, run_id: UUID, **kwargs: Any) -> None:
        """Full-text backstop, then forget the run."""
        self._end(response, run_id)

    async def on_llm_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        """Forget the run."""
        self._error(run_id)
