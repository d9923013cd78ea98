"""Agent guardrail middleware for ``create_agent`` agents (langchain 1.x), sync and async.

- ``wrap_model_call``: asks the model to stream (``model_settings={"stream": True}``), puts the guard
  callback *first* in the current callback manager without dropping inherited handlers (replacing
  them with ``with_config`` would silently turn LangGraph's message streaming off), then re-checks the
  final message. A model without ``_stream`` gets only the final check.
- ``before_model``: judges the latest user input with the monitor's prompt head, when it has one.
- ``wrap_tool_call``: screens tool results (search snippets, retrieved documents) before they enter
  the context; a harmful result is replaced by a notice and the agent keeps running.

A violation ends the model turn as ``on_violation`` says: ``"raise"``, ``"refuse"`` (a refusal with no
tool calls) or ``"truncate"`` (the text cleared before the firing token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse, hook_config
from langchain_core.callbacks import BaseCallbackManager
from langchain_core.messages import AIMessage, BaseMessage, ToolMessage

from langchain_saffron.callbacks import (
    AsyncSaffronGuardCallbackHandler,
    SaffronGuardCallbackHandler,
)
from saffron_runtime.errors import (
    DEFAULT_REFUSAL,
    GuardrailViolation,
    OnViolation,
    Verdict,
    validate_on_violation,
)
from saffron_runtime.monitor.adapters import StreamingMonitor, prompt_checker

TOOL_NOTICE = "[tool result withheld by the guardrail: {reason}]"


@contextlib.contextmanager
def guard_first(handler: Any) -> Iterator[None]:
    """Insert ``handler`` at the front of the current run's callback manager for the duration."""
    try:
        from langgraph.config import get_config

        manager = get_config().get("callbacks")
    except RuntimeError:  # not inside a graph run
        manager = None
    if not isinstance(manager, BaseCallbackManager):
        yield
        return
    manager.handlers.insert(0, handler)
    manager.inheritable_handlers.insert(0, handler)
    try:
        yield
    finally:
        for lst in (manager.handlers, manager.inheritable_handlers):
            if handler in lst:
                lst.remove(handler)


def _text(message: BaseMessage) -> str:
    return message.content if isinstance(message.content, str) else str(message.text)


class SaffronGuardrailMiddleware(AgentMiddleware):
    """Guards an agent's model turns and tool results with a streaming monitor."""

    def __init__(
        self,
        monitor: StreamingMonitor,
        *,
        on_violation: OnViolation = "raise",
        refusal_message: str = DEFAULT_REFUSAL,
        screen_tools: bool = True,
        check_prompts: bool = True,
        prompt_theta: float | None = None,
    ) -> None:
        super().__init__()
        self.monitor = monitor
        self.on_violation = validate_on_violation(on_violation)
        self.refusal_message = refusal_message
        self.screen_tools = screen_tools
        self.check_prompts = check_prompts
        self.prompt_theta = prompt_theta
        self.guard = SaffronGuardCallbackHandler(monitor)
        self.aguard = AsyncSaffronGuardCallbackHandler(monitor)
        self.verdicts: list[Verdict] = []

    # ------------------------------------------------------------------ helpers
    def _streaming(self, request: ModelRequest) -> ModelRequest:
        return request.override(model_settings={**request.model_settings, "stream": True})

    def _final_check(self, prompt: str, message: AIMessage) -> Verdict | None:
        text = _text(message)
        if not text:
            return None
        session = self.monitor.open(prompt)
        return session.feed_text(text) or session.finish()

    def _blocked(self, verdict: Verdict, cleared: str) -> ModelResponse:
        self.verdicts.append(verdict)
        if self.on_violation == "raise":
            raise GuardrailViolation(verdict)
        content = self.refusal_message if self.on_violation == "refuse" else cleared
        meta = {
            "saffron": {
                "blocked": True,
                "on_violation": self.on_violation,
                "verdicts": [verdict.to_dict()],
            }
        }
        return ModelResponse(result=[AIMessage(content=content, response_metadata=meta)])

    @staticmethod
    def _prompt(request: ModelRequest) -> str:
        humans = [m for m in request.messages if m.type == "human"]
        return _text(humans[-1]) if humans else ""

    def _after(self, request: ModelRequest, response: ModelResponse) -> ModelResponse:
        for msg in response.result:
            if isinstance(msg, AIMessage):
                verdict = self._final_check(self._prompt(request), msg)
                if verdict is not None:
                    return self._blocked(verdict, "")
        return response

    # ------------------------------------------------------------------ model calls
    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        """Stream the model through the guard (first in line), then re-check the final message."""
        try:
            with guard_first(self.guard):
                response = handler(self._streaming(request))
        except GuardrailViolation as e:
            return self._blocked(e.verdict, getattr(e, "cleared_text", ""))
        return self._after(request, response)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        """Async twin of :meth:`wrap_model_call`."""
        try:
            with guard_first(self.aguard):
                response = await handler(self._streaming(request))
        except GuardrailViolation as e:
            return self._blocked(e.verdict, getattr(e, "cleared_text", ""))
        return self._after(request, response)

    # ------------------------------------------------------------------ prompts
    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Refuse before generation when the prompt head judges the latest user input harmful."""
        check = prompt_checker(self.monitor) if self.check_prompts else None
        if check is None:
            return None
        humans = [m for m in state["messages"] if m.type == "human"]
        if not humans or state["messages"][-1].type != "human":
            return None
        verdict = check(_text(humans[-1]), theta=self.prompt_theta)
        if verdict is None:
            return None
        self.verdicts.append(verdict)
        if self.on_violation == "raise":
            raise GuardrailViolation(verdict)
        meta = {
            "saffron": {
                "blocked": True,
                "on_violation": self.on_violation,
                "verdicts": [verdict.to_dict()],
            }
        }
        return {
            "messages": [AIMessage(content=self.refusal_message, response_metadata=meta)],
            "jump_to": "end",
        }

    # ------------------------------------------------------------------ tools
    def _screen(self, request: Any, result: Any) -> Any:
        if not self.screen_tools or not isinstance(result, ToolMessage):
            return result
        call = request.tool_call
        session = self.monitor.open(f"tool {call.get('name')}({call.get('args')})")
        verdict = session.feed_text(_text(result)) or session.finish()
        if verdict is None:
            return result
        self.verdicts.append(verdict)
        return ToolMessage(
            content=TOOL_NOTICE.format(reason=verdict.reason or verdict.rule),
            tool_call_id=result.tool_call_id,
            name=result.name,
            status="error",
            response_metadata={"saffron": {"blocked": True, "verdicts": [verdict.to_dict()]}},
        )

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Run the tool, then replace a harmful result by a notice."""
        return self._screen(request, handler(request))

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        """Async twin of :meth:`wrap_tool_call`."""
        return self._screen(request, await handler(request))
