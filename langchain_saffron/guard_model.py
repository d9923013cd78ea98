"""``guard(model, monitor)``: hold-back for any LangChain chat model.

:class:`GuardedChatModel` wraps another chat model (ChatOpenAI, ChatAnthropic, ChatHuggingFace,
ChatSaffron, a fake) and streams it through a monitor session: only text the monitor has cleared is
yielded, so no consumer (``invoke``, ``stream``, ``astream``, ``batch``, ``astream_events``, LangGraph
``stream_mode="messages"`` / ``"updates"``) ever receives the firing token or anything after it.
The moment the monitor fires, the inner stream is closed (``close()`` / ``aclose()``), so a local
model that cleans up in ``finally`` (ChatSaffron does) stops computing.

Why the inner model runs with no callbacks of the outer run: LangGraph's message streamer and
``astream_events`` listen to every chat model in the run, and would otherwise see the inner model's
raw tokens, flagged ones included. The wrapper is the only model they see.

Tool calls are held until the message is complete, then each call's name and arguments are judged;
text and tool-call verdicts land in ``response_metadata["saffron"]`` (with ``held_chars``, the most
characters the monitor held uncleared: the latency cost of hold-back, bounded by ``max_held_chars``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessageChunk, BaseMessage, message_chunk_to_message
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable, RunnableLambda, RunnableParallel, RunnablePassthrough
from pydantic import BaseModel, ConfigDict, Field

from langchain_saffron._guard import (
    judge_text,
    last_user_text,
    require_monitor,
    saffron_metadata,
    violation,
)
from langchain_saffron._holdback import HeldStream
from saffron_runtime.errors import (
    DEFAULT_REFUSAL,
    ConfigError,
    GuardrailViolation,
    OnViolation,
    validate_on_violation,
)
from saffron_runtime.monitor.adapters import StreamingMonitor


def _isolated() -> dict[str, Any]:
    """The inner model's config: none of the outer run's handlers (they would see its raw tokens)."""
    return {"callbacks": []}


def _check_monitor(monitor: Any) -> StreamingMonitor:
    return require_monitor(monitor)


class GuardedChatModel(BaseChatModel):
    """A chat model that releases only the text ``monitor`` has cleared. Build it with :func:`guard`.

    ``on_violation``: ``"raise"`` raises :class:`GuardrailViolation` (its ``cleared_text`` is what was
    released); ``"refuse"`` ends with ``refusal_message`` (a streaming consumer already has the cleared
    text, then gets the refusal); ``"truncate"`` ends with the cleared text. A flagged tool call is
    blocked the same way, except that ``"truncate"`` drops only the flagged calls.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    inner: Runnable[LanguageModelInput, BaseMessage]
    """The wrapped chat model (or its ``bind_tools`` binding)."""
    monitor: Any
    """A :class:`~saffron_runtime.monitor.adapters.StreamingMonitor`."""
    on_violation: OnViolation = "raise"
    refusal_message: str = DEFAULT_REFUSAL
    max_held_chars: int | None = Field(default=None, ge=1)
    """The most characters hold-back may hold uncleared; past it the stream stops with a
    ``hold-back-limit`` verdict (fail closed). None: no bound (the monitor decides)."""
    judge_tool_calls: bool = True
    """Judge each tool call's name and arguments before the message leaves."""

    def __init__(self, **data: Any) -> None:
        data["monitor"] = _check_monitor(data.get("monitor"))
        if "on_violation" in data:
            data["on_violation"] = validate_on_violation(data["on_violation"])
        super().__init__(**data)

    @property
    def _llm_type(self) -> str:
        return "saffron-guarded"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        name = getattr(self.inner, "_llm_type", type(self.inner).__name__)
        return {"inner": name, "on_violation": self.on_violation}

    @property
    def streaming_monitor(self) -> StreamingMonitor:
        """The monitor this model judges its own output with (the middleware trusts it)."""
        return self.monitor

    # ------------------------------------------------------------------ the end of a response
    def _final(self, held: HeldStream, refuse_tail: bool) -> AIMessageChunk:
        """The last chunk (tool calls, usage, metadata); raises under ``"raise"`` when blocked.

        ``refuse_tail``: in a stream the cleared text is already out, so a refusal is appended to it.
        """
        if held.verdict is None and self.judge_tool_calls:
            held.judge_tool_calls()
        verdicts = held.verdicts
        if verdicts and self.on_violation == "raise":
            raise violation(verdicts[0], held.released)
        rest = held.rest or AIMessageChunk(content="")
        calls = held.tool_call_chunks()
        refused = bool(verdicts) and (self.on_violation == "refuse" or held.verdict is not None)
        text = ""
        if refused:
            calls = []
            if self.on_violation == "refuse":
                sep = "\n\n" if refuse_tail and held.released else ""
                text = sep + self.refusal_message
        else:
            calls = [c for i, c in enumerate(calls) if i not in held.tool_verdicts]
        meta = saffron_metadata(
            verdicts, blocked=bool(verdicts), on_violation=self.on_violation,
            held_chars=held.peak_held,
        )
        return AIMessageChunk(
            content=text,
            tool_call_chunks=calls,  # type: ignore[arg-type]
            usage_metadata=rest.usage_metadata,
            response_metadata={**rest.response_metadata, **meta},
            chunk_position="last",
        )

    def _open(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> HeldStream:
        kwargs.pop("stream", None)  # the inner model is always streamed
        return HeldStream(self.monitor, last_user_text(messages), self.max_held_chars)

    # ------------------------------------------------------------------ sync
    def _deltas(
        self, messages: list[BaseMessage], stop: list[str] | None, held: HeldStream, kwargs: Any
    ) -> Iterator[str]:
        """Released text of the inner stream; the inner stream is closed as soon as it fires."""
        if held.verdict is not None:  # the monitor could not even open
            return
        inner = iter(self.inner.stream(messages, config=_isolated(), stop=stop, **kwargs))
        try:
            for chunk in inner:
                delta = held.push(chunk)
                if delta:
                    yield delta
                if held.verdict is not None:
                    return
        finally:
            close = getattr(inner, "close", None)
            if close is not None:
                close()  # stops a local inner model that cleans up in finally
        delta = held.finish()
        if delta:
            yield delta

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        held = self._open(messages, kwargs)
        for delta in self._deltas(messages, stop, held, kwargs):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager is not None:
                run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        yield ChatGenerationChunk(message=self._final(held, refuse_tail=True))

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        held = self._open(messages, kwargs)
        for _ in self._deltas(messages, stop, held, kwargs):
            pass
        return self._result(held)

    def _result(self, held: HeldStream) -> ChatResult:
        last = self._final(held, refuse_tail=False)
        refused = held.verdicts and self.on_violation == "refuse"
        text = last.content if refused else held.released
        message = message_chunk_to_message(last.model_copy(update={"content": text}))
        return ChatResult(generations=[ChatGeneration(message=message)])

    # ------------------------------------------------------------------ async
    async def _adeltas(
        self, messages: list[BaseMessage], stop: list[str] | None, held: HeldStream, kwargs: Any
    ) -> AsyncIterator[str]:
        """Async twin of :meth:`_deltas`; the monitor scores in a worker thread."""
        if held.verdict is not None:
            return
        inner = self.inner.astream(messages, config=_isolated(), stop=stop, **kwargs).__aiter__()
        try:
            async for chunk in inner:
                delta = await asyncio.to_thread(held.push, chunk)
                if delta:
                    yield delta
                if held.verdict is not None:
                    return
        finally:
            aclose = getattr(inner, "aclose", None)
            if aclose is not None:
                await aclose()
        delta = await asyncio.to_thread(held.finish)
        if delta:
            yield delta

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        held = self._open(messages, kwargs)
        async for delta in self._adeltas(messages, stop, held, kwargs):
            chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
            if run_manager is not None:
                await run_manager.on_llm_new_token(delta, chunk=chunk)
            yield chunk
        last = await asyncio.to_thread(self._final, held, True)
        yield ChatGenerationChunk(message=last)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        held = self._open(messages, kwargs)
        async for _ in self._adeltas(messages, stop, held, kwargs):
            pass
        return await asyncio.to_thread(self._result, held)

    # ------------------------------------------------------------------ tools, structured output
    def bind_tools(self, tools: Any, **kwargs: Any) -> GuardedChatModel:  # type: ignore[override]
        """The inner model's ``bind_tools``, still guarded (tool calls are judged before they leave)."""
        return self.model_copy(update={"inner": self.inner.bind_tools(tools, **kwargs)})  # type: ignore[attr-defined]

    def with_structured_output(  # type: ignore[override]
        self, schema: Any, *, include_raw: bool = False, **kwargs: Any
    ) -> Runnable[LanguageModelInput, Any]:
        """The inner model's structured output, judged as JSON before it is returned.

        A structured answer has no text form to refuse or truncate into, so a flagged one always
        raises :class:`GuardrailViolation`, whatever ``on_violation`` says.
        """
        structured = self.inner.with_structured_output(  # type: ignore[attr-defined]
            schema, include_raw=include_raw, **kwargs
        )

        def judged(x: dict[str, Any]) -> Any:
            out = x["output"]
            value = out.get("parsed") if include_raw and isinstance(out, dict) else out
            if isinstance(value, BaseModel):
                text = value.model_dump_json()
            else:
                text = json.dumps(value, ensure_ascii=False, default=str)
            prompt = last_user_text(self._convert_input(x["input"]).to_messages())
            verdict = judge_text(self.monitor, prompt, text)
            if verdict is not None:
                raise GuardrailViolation(verdict)
            return out

        return RunnableParallel(input=RunnablePassthrough(), output=structured) | RunnableLambda(
            judged
        )


def guard(
    model: Runnable[LanguageModelInput, BaseMessage],
    monitor: StreamingMonitor,
    *,
    on_violation: OnViolation = "raise",
    refusal_message: str = DEFAULT_REFUSAL,
    max_held_chars: int | None = None,
    judge_tool_calls: bool = True,
) -> GuardedChatModel:
    """Wrap any chat model so that only text ``monitor`` has cleared reaches a consumer.

    Example: ``guard(ChatOpenAI(model="gpt-4o-mini"), SCMMonitor(load_monitor("bundled")),
    on_violation="truncate").stream("...")`` yields cleared text only and stops the inner stream
    the moment the monitor fires.
    """
    if not isinstance(model, Runnable):
        raise ConfigError(
            f"guard(): model={model!r} is not a LangChain chat model; pass a BaseChatModel "
            "(ChatOpenAI, ChatHuggingFace, ChatSaffron, ...)"
        )
    return GuardedChatModel(
        inner=model,
        monitor=monitor,
        on_violation=on_violation,
        refusal_message=refusal_message,
        max_held_chars=max_held_chars,
        judge_tool_calls=judge_tool_calls,
    )
