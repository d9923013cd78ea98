"""ChatSaffron: a LangChain chat model that decodes a local Hugging Face model under Saffron search,
streams only committed text the monitor has cleared, and stops the moment harm is detected.

``_generate`` drives the same loop as ``_stream`` and fires ``on_llm_new_token`` when it has a run
manager, so guard callbacks also see plain ``invoke()``; a guard callback's stop signal ends the
search within one step. Search settings are the fields of
:class:`~saffron_runtime.search.config.SearchFields` and can be overridden per call with
``.bind(...)`` or an agent middleware's ``model_settings``. The models are assembled by
:func:`saffron_runtime.stack.build_stack`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.prompt_values import PromptValue
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, ValidationError

from langchain_saffron._inputs import check_messages, convert_input
from langchain_saffron._outcome import final_message, guard_stop_events, last_chunk
from langchain_saffron._prompting import output_constraint, render_prompt
from langchain_saffron._structured import json_schema_output
from langchain_saffron.remote import FORWARDED, RemoteSaffron
from saffron_runtime.config import describe_validation_error
from saffron_runtime.errors import DEFAULT_REFUSAL, ConfigError, OnViolation, validate_on_violation
from saffron_runtime.guarded import GuardedGeneration, GuardedOutcome, LinkedStopEvent
from saffron_runtime.monitor.adapters import StreamingMonitor
from saffron_runtime.search.config import SEARCH_FIELDS, SearchConfig, SearchFields
from saffron_runtime.search.engine import SearchEngine
from saffron_runtime.stack import Stack, StackOptions, build_stack

CALL_KWARGS = frozenset(SEARCH_FIELDS) | {
    "max_tokens",  # LangChain's standard name of max_new_tokens
    "on_violation",
    "tools",
    "tool_choice",
    "ls_structured_output_format",
    "response_format",
    "target_entities",
    "model",
    "stream",
}
"""Every setting a call (``invoke(..., **kw)``, ``.bind(**kw)``) may pass; others are errors."""

STANDARD_IGNORED = frozenset({"api_key", "base_url", "timeout", "max_retries", "streaming"})
"""LangChain's standard constructor settings of hosted models: accepted and ignored by a local model
(so code written for any chat model runs); any other unknown setting is a ConfigError."""


def _field_names(cls: type[Any]) -> set[str]:
    """Every name a pydantic model's constructor accepts: field names and their aliases."""
    names: set[str] = set()
    for name, f in cls.model_fields.items():
        names.add(name)
        if f.alias:
            names.add(f.alias)
        va = f.validation_alias
        names.update([va] if isinstance(va, str) else [c for c in getattr(va, "choices", []) if isinstance(c, str)])
    return names


class ChatSaffron(BaseChatModel, SearchFields):
    """Guarded chat over a local model: Saffron search (MRM-guided, trie-cached) + streaming monitor.

    ``policy``, ``mrm``, ``monitor`` and ``prm`` are each an object or a path; ``policy="smollm2"`` is
    the packaged SmolLM2-135M-Instruct and ``"bundled"`` the shipped MRM / monitor. The default
    ``"auto"`` uses the bundled models whenever the policy speaks SmolLM2's vocabulary, and nothing
    otherwise (``method="saffron"`` then asks for an MRM). Every method works: ``saffron``,
    ``best_of_n`` (ranked by the PRM, else the MRM), ``prm_beam`` and ``greedy``; the models another
    method needs load on its first call (``.bind(method=...)``).
    ``on_violation``: ``"raise"`` (default) raises :class:`GuardrailViolation`; ``"refuse"`` answers
    with ``refusal_message``; ``"truncate"`` returns the cleared prefix. Both are marked blocked in
    ``response_metadata["saffron"]``.
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True,
        protected_namespaces=(),
        populate_by_name=True,
        use_attribute_docstrings=True,
    )

    policy: Any = "smollm2"
    """The policy: "smollm2", a model folder, a .gguf file, a LoadedModel or a model object."""
    mrm: Any = "auto"
    """The multifurcation reward model of Saffron search: "auto", "bundled", a folder, an object or None."""
    monitor: Any = "auto"
    """The streaming monitor: "auto", "bundled", a folder, a monitor object, or None (no monitor)."""
    prm: Any = "auto"
    """The process reward model of PRM beam and the Best-of-N ranker: "auto" (the monitor's response
    head), "bundled", a monitor folder, a monitor or PRM object, or None (Best-of-N ranks by the MRM)."""
    tokenizer: Any = None
    """The policy's tokenizer, required when ``policy`` is a model object."""
    device: str | None = None
    """Where the models run: "cpu", "cuda", "cuda:1", "mps". None: models loaded by name or path run
    on the CPU and a model given as an object stays where it is; the MRM and monitor follow the policy."""
    dtype: str | None = None
    """The models' dtype: "float32", "bfloat16" or "float16". None: each checkpoint's own dtype."""
    on_violation: OnViolation = "raise"
    """What a blocked answer becomes: "raise", "refuse" (``refusal_message``) or "truncate"."""
    check_prompt: bool = False
    """Judge the latest user message with the monitor's prompt head before generating (when it has one)."""
    json_max_string_length: int | None = Field(None, ge=1)
    """Cap on free strings in constrained output (tool arguments, structured output): a small model
    decoding greedily can loop inside a string until ``max_tokens`` and never close the JSON. ``None``
    leaves strings unbounded."""
    refusal_message: str = DEFAULT_REFUSAL
    """The answer under ``on_violation="refuse"``."""
    model_name: str = Field("saffron", alias="model")
    """The name reported to LangChain (``ls_model_name``, ``response_metadata``)."""
    stop: list[str] | None = Field(None, alias="stop_sequences")
    """Strings that end the answer as EOS does."""
    base_url: str | None = None
    """A ``saffron serve`` endpoint (``http://host:8000/v1``): calls go there and no model loads
    here; the service's models and monitor apply (see langchain_saffron/remote.py)."""

    _stack: Stack = PrivateAttr()
    _remote: RemoteSaffron | None = PrivateAttr(None)

    def __init__(self, **data: Any) -> None:
        unknown = sorted(set(data) - _field_names(type(self)) - STANDARD_IGNORED)
        if unknown:  # langchain-core ignores unknown fields: a typo would silently do nothing
            raise ConfigError(
                f"ChatSaffron got unknown setting(s) {unknown}; see ChatSaffron's fields "
                "(e.g. budget, max_tokens, method, monitor, on_violation)"
            )
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise ConfigError(describe_validation_error("ChatSaffron", e)) from None
        self._settings({})  # the search settings as the engine will read them
        if self.base_url:
            self._remote = RemoteSaffron(self.base_url, self.model_name)
            return
        options = StackOptions(
            policy=self.policy,
            tokenizer=self.tokenizer,
            mrm=self.mrm,
            monitor=self.monitor,
            prm=self.prm,
            methods=(self.method,),
            device=self.device,
            dtype=self.dtype,
        )
        self._stack = build_stack(options)

    # ------------------------------------------------------------------ properties
    @property
    def engine(self) -> SearchEngine:
        """The search engine (policy, MRM / PRM and their tries) as loaded so far."""
        return self._stack.engine

    @property
    def stack(self) -> Stack:
        """Every assembled model (policy, MRM, PRM, monitor)."""
        return self._stack

    @property
    def streaming_monitor(self) -> StreamingMonitor | None:
        """The streaming monitor every answer is checked with (None when switched off, or remote):
        a guard around this model can skip judging the same text again."""
        return None if self._remote else self._stack.streaming_monitor

    @property
    def _llm_type(self) -> str:
        return "saffron"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        monitor = self.streaming_monitor
        return {
            "model_name": self.model_name,
            "policy": self.base_url or self._stack.policy.source,
            **{f: getattr(self, f) for f in SEARCH_FIELDS},
            "on_violation": self.on_violation,
            "monitor": type(monitor).__name__ if monitor else None,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "saffron"
        params["ls_model_name"] = kwargs.get("model", self.model_name)
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get(
            "max_tokens", kwargs.get("max_new_tokens", self.max_new_tokens)
        )
        return params

    # ------------------------------------------------------------------ one run
    def _convert_input(self, model_input: LanguageModelInput) -> PromptValue:
        """langchain-core's conversion, with a clear PromptError for bytes and unreadable input."""
        return convert_input(model_input, super()._convert_input)

    def _settings(self, kwargs: dict[str, Any], stop: list[str] | None = None) -> SearchConfig:
        unknown = set(kwargs) - CALL_KWARGS
        if unknown:
            raise ConfigError(
                f"unknown setting(s) {sorted(unknown)}; ChatSaffron accepts {sorted(CALL_KWARGS)}"
            )
        values = {f: kwargs.get(f, getattr(self, f)) for f in SEARCH_FIELDS}
        if "max_tokens" in kwargs:
            values["max_new_tokens"] = kwargs["max_tokens"]
        return SearchConfig(**values, stop=list(stop or self.stop or []))

    def _remote_settings(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """What a remote call sends: settings given to this instance, then the call's."""
        given = {f: getattr(self, f) for f in (*SEARCH_FIELDS, "on_violation", "json_max_string_length")
                 if f in self.model_fields_set}
        return {**given, **{k: v for k, v in kwargs.items() if k in SEARCH_FIELDS or k in FORWARDED}}

    def _start(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        stop_event: threading.Event | None = None,
    ) -> tuple[GuardedGeneration, int, OnViolation]:
        cfg = self._settings(kwargs, stop)
        check_messages(messages)
        engine = self._stack.engine_for(cfg.method)
        tok = engine.policy.tokenizer
        constraint, schema = output_constraint(tok, kwargs, self.json_max_string_length)
        ids, prompt_text = render_prompt(
            tok, engine.policy.source, messages, kwargs.get("tools"), schema
        )
        gen = GuardedGeneration(
            engine,
            self.streaming_monitor,
            ids,
            cfg,
            prompt_text=prompt_text,
            stop_event=stop_event,
            check_prompt=self.check_prompt,
            constraint=constraint,
        )
        return gen, len(ids), validate_on_violation(kwargs.get("on_violation", self.on_violation))

    def _final(self, outcome: GuardedOutcome, n_prompt: int, on_violation: str, tools: Any) -> AIMessage:
        return final_message(
            outcome,
            n_prompt,
            on_violation=on_violation,
            tools=tools,
            refusal_message=self.refusal_message,
            model_name=self.model_name,
        )

    # ------------------------------------------------------------------ LangChain hooks
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        if self._remote is not None:
            self._settings(kwargs, stop)  # the same checks as a local call
            msg = self._remote.invoke(messages, stop or self.stop, self._remote_settings(kwargs))
            return ChatResult(generations=[ChatGeneration(message=msg)])
        stop_event = LinkedStopEvent(*guard_stop_events(run_manager))
        gen, n_prompt, on_violation = self._start(messages, stop, kwargs, stop_event)
        for delta in gen:
            if run_manager is not None:
                run_manager.on_llm_new_token(
                    delta, chunk=ChatGenerationChunk(message=AIMessageChunk(content=delta))
                )
        msg = self._final(gen.outcome, n_prompt, on_violation, kwargs.get("tools"))
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        stop_event: threading.Event,
    ) -> Iterator[ChatGenerationChunk]:
        """Released text as chunks, then a last chunk with tool calls, usage and metadata."""
        if self._remote is not None:
            self._settings(kwargs, stop)
            yield from self._remote.chunks(
                messages, stop or self.stop, self._remote_settings(kwargs), stop_event)
            return
        gen, n_prompt, on_violation = self._start(messages, stop, kwargs, stop_event)
        tools = kwargs.get("tools")
        try:
            for delta in gen:
                if not tools:  # with tools, calls are parsed from the whole output: sent at the end
                    yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
        finally:
            stop_event.set()
        final = self._final(gen.outcome, n_prompt, on_violation, tools)
        yield last_chunk(
            final, gen.outcome, on_violation=on_violation, tools=tools, refusal=self.refusal_message
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        stop_event = LinkedStopEvent(*guard_stop_events(run_manager))
        for chunk in self._chunks(messages, stop, kwargs, stop_event):
            if run_manager is not None and chunk.message.content:
                run_manager.on_llm_new_token(str(chunk.message.content), chunk=chunk)
            yield chunk

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancelled = threading.Event()  # the consumer went away: stop producing
        stop_event = LinkedStopEvent(cancelled, *guard_stop_events(run_manager))
        done = object()

        def produce() -> None:
            try:
                for chunk in self._chunks(messages, stop, kwargs, stop_event):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                    if cancelled.is_set():  # a guard's stop still lets the final chunk through
                        break
            except BaseException as e:  # noqa: BLE001 - re-raised in the event loop
                loop.call_soon_threadsafe(queue.put_nowait, e)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                if run_manager is not None and item.message.content:
                    await run_manager.on_llm_new_token(str(item.message.content), chunk=item)
                yield item
        finally:
            cancelled.set()  # cancelling the consumer stops the search
            await asyncio.shield(worker)

    # ------------------------------------------------------------------ structured output, tools
    def with_structured_output(
        self,
        schema: dict[str, Any] | type,
        *,
        include_raw: bool = False,
        method: Literal["function_calling", "json_schema", "json_mode"] = "function_calling",
        strict: bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, Any]:
        """Structured output by grammar-constrained decoding: a forced tool call (``function_calling``) or a
        JSON value matching the schema (``json_schema``, and ``json_mode`` when a schema is given: a small
        model asked for "JSON" writes any object otherwise; with no schema, any JSON object)."""
        if method == "function_calling":
            return super().with_structured_output(schema, include_raw=include_raw, **kwargs)
        return json_schema_output(self, schema, include_raw=include_raw, method=method)

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable | BaseTool],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools; ``tool_choice`` ("any"/"required"/a tool name) forces a call with constrained decoding."""
        formatted = [convert_to_openai_tool(t) for t in tools]
        if isinstance(tool_choice, str) and tool_choice not in ("auto", "none", "any", "required"):
            tool_choice = {"type": "function", "function": {"name": tool_choice}}
        return super().bind(tools=formatted, tool_choice=tool_choice, **kwargs)
