"""Agent guardrail middleware for ``create_agent`` agents (langchain 1.x), sync and async.

- ``wrap_model_call`` holds text back: the model runs wrapped in :func:`~langchain_saffron.guard_model.guard`
  (``request.override(model=guard(model, monitor))``), so LangGraph's message stream, ``astream_events``
  and the final message see only text the monitor has cleared, whatever the stream mode. The guard
  raises inside the turn and the middleware ends the turn as ``on_violation`` says.
- One monitor per stack: when the model guards itself (a ChatSaffron with a monitor, or a
  ``guard()``-ed model, seen through its ``streaming_monitor``), the middleware does not wrap it and
  reads the model's own verdicts from ``response_metadata["saffron"]``, so each text is judged once.
  ``trust_model_monitor=False`` wraps and judges again anyway (for a middleware monitor that differs).
- ``before_model``: judges the latest user input with the monitor's prompt head, when it has one.
- ``wrap_tool_call``: judges each tool *call* (name and arguments) before the tool runs: a flagged call
  is not executed, the tool gets a notice instead (or the run stops under ``"raise"``); then screens
  tool results (search snippets, retrieved documents) before they enter the context.

A violation ends the model turn as ``on_violation`` says: ``"raise"``, ``"refuse"`` (a refusal with no
tool calls) or ``"truncate"`` (the text cleared before the firing token). That holds for the model's
own blocks too: the middleware's ``on_violation`` decides the turn, whatever the model's was.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from langchain.agents.middleware import AgentMiddleware, ModelRequest, ModelResponse, hook_config
from langchain_core.messages import AIMessage, ToolMessage

from langchain_saffron._guard import (
    blocked_message,
    cleared_text,
    enforce,
    judge_text,
    last_user_text,
    message_text,
    model_verdicts,
    require_monitor,
    saffron_metadata,
)
from langchain_saffron._holdback import tool_call_text
from langchain_saffron.guard_model import guard
from saffron_runtime.errors import (
    DEFAULT_REFUSAL,
    GuardrailViolation,
    OnViolation,
    Verdict,
    validate_on_violation,
)
from saffron_runtime.monitor.adapters import StreamingMonitor, prompt_checker

TOOL_NOTICE = "[tool result withheld by the guardrail: {reason}]"
CALL_NOTICE = "[tool call blocked by the guardrail, the tool did not run: {reason}]"


class SaffronGuardrailMiddleware(AgentMiddleware):
    """Guards an agent's model turns and tool results with a streaming monitor.

    Args:
        monitor: judges model output, tool results and (with a prompt head) user input.
        on_violation: what a blocked model turn becomes: ``"raise"``, ``"refuse"``, ``"truncate"``.
        refusal_message: the answer of a refused turn.
        screen_tools: replace harmful tool results by a notice.
        check_prompts: judge the latest user input before the model runs (prompt head only).
        prompt_theta: the prompt head's threshold; None keeps the one saved with the monitor.
        trust_model_monitor: when the model guards itself (its ``streaming_monitor`` is set), take
            its verdicts instead of judging its output again; False judges it here as well.
        judge_tool_calls: judge each tool call's name and arguments before the tool runs.
        max_held_chars: the most characters hold-back may hold uncleared (see ``guard()``); None:
            no bound.
    """

    def __init__(
        self,
        monitor: StreamingMonitor,
        *,
        on_violation: OnViolation = "raise",
        refusal_message: str = DEFAULT_REFUSAL,
        screen_tools: bool = True,
        check_prompts: bool = True,
        prompt_theta: float | None = None,
        trust_model_monitor: bool = True,
        judge_tool_calls: bool = True,
        max_held_chars: int | None = None,
    ) -> None:
        super().__init__()
        self.monitor = require_monitor(monitor)
        self.on_violation = validate_on_violation(on_violation)
        self.refusal_message = refusal_message
        self.screen_tools = screen_tools
        self.check_prompts = check_prompts
        self.prompt_theta = prompt_theta
        self.trust_model_monitor = trust_model_monitor
        self.judge_tool_calls = judge_tool_calls
        self.max_held_chars = max_held_chars
        self.verdicts: list[Verdict] = []

    # ------------------------------------------------------------------ helpers
    def _prepare(self, request: ModelRequest) -> tuple[ModelRequest, bool]:
        """The request to run (the model wrapped in ``guard()`` unless it guards itself, asked to
        stream) and whether the final message is judged by its own verdicts."""
        if not self._model_judges(request):
            held = guard(
                request.model,
                self.monitor,
                max_held_chars=self.max_held_chars,
                judge_tool_calls=False,  # judged in wrap_tool_call, where a notice can replace it
            )
            request = request.override(model=held)
        request = request.override(model_settings={**request.model_settings, "stream": True})
        return request, self.trust_model_monitor

    def _model_judges(self, request: ModelRequest) -> bool:
        """True when the model runs its own monitor (ChatSaffron, guard()), so its verdicts are used."""
        if not self.trust_model_monitor:
            return False
        return getattr(request.model, "streaming_monitor", None) is not None

    def _blocked(self, verdicts: list[Verdict], cleared: str) -> ModelResponse:
        self.verdicts.extend(verdicts)
        enforce(verdicts[0], self.on_violation)
        text = self.refusal_message if self.on_violation == "refuse" else cleared
        return ModelResponse(result=[blocked_message(text, verdicts, self.on_violation)])

    def _judged_by_model(self, message: AIMessage) -> tuple[list[Verdict], str] | None:
        """The model's own verdicts on ``message`` and the text it cleared; None if it gave none."""
        judged = model_verdicts(message)
        if judged is None:
            return None
        blocked, verdicts = judged
        if not blocked:
            return [], ""
        meta = message.response_metadata["saffron"]
        truncated = meta.get("on_violation") == "truncate"
        return verdicts, message_text(message) if truncated else ""

    def _after(
        self, request: ModelRequest, response: ModelResponse, model_judges: bool
    ) -> ModelResponse:
        """Block the turn when a final message is unsafe: by the model's verdicts, or judged here."""
        prompt = last_user_text(request.messages)
        for msg in response.result:
            if not isinstance(msg, AIMessage):
                continue
            judged = self._judged_by_model(msg) if model_judges else None
            if judged is None:
                verdict = judge_text(self.monitor, prompt, message_text(msg))
                judged = ([verdict], "") if verdict is not None else ([], "")
            verdicts, cleared = judged
            if verdicts:
                return self._blocked(verdicts, cleared)
        return response

    # ------------------------------------------------------------------ model calls
    def wrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]
    ) -> ModelResponse:
        """Run the model under hold-back (only cleared text is streamed), then settle the turn."""
        request, model_judges = self._prepare(request)
        try:
            response = handler(request)
        except GuardrailViolation as e:
            return self._blocked([e.verdict], cleared_text(e))
        return self._after(request, response, model_judges)

    async def awrap_model_call(
        self, request: ModelRequest, handler: Callable[[ModelRequest], Awaitable[ModelResponse]]
    ) -> ModelResponse:
        """Async twin of :meth:`wrap_model_call`."""
        request, model_judges = self._prepare(request)
        try:
            response = await handler(request)
        except GuardrailViolation as e:
            return self._blocked([e.verdict], cleared_text(e))
        return self._after(request, response, model_judges)

    # ------------------------------------------------------------------ prompts
    @hook_config(can_jump_to=["end"])
    def before_model(self, state: Any, runtime: Any) -> dict[str, Any] | None:
        """Refuse before generation when the prompt head judges the latest user input harmful."""
        check = prompt_checker(self.monitor) if self.check_prompts else None
        if check is None:
            return None
        messages = state["messages"]
        if not messages or messages[-1].type != "human":
            return None
        verdict = check(last_user_text(messages), theta=self.prompt_theta)
        if verdict is None:
            return None
        self.verdicts.append(verdict)
        enforce(verdict, self.on_violation)
        # nothing was generated, so "truncate" has no cleared text to show: it refuses too
        reply = blocked_message(self.refusal_message, [verdict], self.on_violation)
        return {"messages": [reply], "jump_to": "end"}

    # ------------------------------------------------------------------ tools
    def _screen(self, request: Any, result: Any) -> Any:
        if not self.screen_tools or not isinstance(result, ToolMessage):
            return result
        call = request.tool_call
        prompt = f"tool {call.get('name')}({call.get('args')})"
        verdict = judge_text(self.monitor, prompt, message_text(result))
        if verdict is None:
            return result
        self.verdicts.append(verdict)
        return ToolMessage(
            content=TOOL_NOTICE.format(reason=verdict.reason or verdict.rule),
            tool_call_id=result.tool_call_id,
            name=result.name,
            status="error",
            response_metadata=saffron_metadata([verdict]),
        )

    def _judge_call(self, request: Any) -> ToolMessage | None:
        """A notice in place of a flagged tool call (None when the call may run); raises under
        ``"raise"``. The call is judged as ``name(arguments)`` against the latest user input."""
        if not self.judge_tool_calls:
            return None
        call = request.tool_call
        state = getattr(request, "state", None)
        messages = state.get("messages", []) if isinstance(state, Mapping) else []
        verdict = judge_text(self.monitor, last_user_text(messages), tool_call_text(call))
        if verdict is None:
            return None
        self.verdicts.append(verdict)
        enforce(verdict, self.on_violation)
        return ToolMessage(
            content=CALL_NOTICE.format(reason=verdict.reason or verdict.rule),
            tool_call_id=call.get("id") or "",
            name=call.get("name"),
            status="error",
            response_metadata=saffron_metadata([verdict], on_violation=self.on_violation),
        )

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        """Judge the call (a flagged one does not run), run the tool, screen its result."""
        notice = self._judge_call(request)
        if notice is not None:
            return notice
        return self._screen(request, handler(request))

    async def awrap_tool_call(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        """Async twin of :meth:`wrap_tool_call`."""
        notice = self._judge_call(request)
        if notice is not None:
            return notice
        return self._screen(request, await handler(request))
