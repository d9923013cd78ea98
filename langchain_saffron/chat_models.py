"""ChatSaffron: a LangChain chat model that decodes a local Hugging Face model under Saffron search,
streams only committed text the monitor has cleared, and stops the moment harm is detected.

``_generate`` drives the same loop as ``_stream`` and fires ``on_llm_new_token`` when it has a run
manager, so guard callbacks also see plain ``invoke()``. Search settings are fields and can be
overridden per call with ``.bind(...)`` or an agent middleware's ``model_settings``.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import LanguageModelInput
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr

from langchain_saffron.messages import (
    parse_tool_calls,
    template_supports_tools,
    to_template_messages,
)
from saffron_runtime.bundled import BUNDLED
from saffron_runtime.constraints import Grammar
from saffron_runtime.errors import DEFAULT_REFUSAL, ConfigError, GuardrailViolation, OnViolation
from saffron_runtime.guarded import GuardedGeneration, GuardedOutcome
from saffron_runtime.models.loading import LoadedModel, load_policy
from saffron_runtime.models.mrm import MultifurcationRewardModel
from saffron_runtime.models.mrm_io import load_mrm
from saffron_runtime.models.smollm2 import smollm2_tokenizer, speaks_smollm2
from saffron_runtime.models.vocab import check_vocab_compatible
from saffron_runtime.monitor.adapters import SCMMonitor, StreamingMonitor
from saffron_runtime.monitor.model import SCMMonitorModel, load_monitor
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.engine import SearchEngine

SEARCH_FIELDS = (
    "method",
    "budget",
    "num_samples",
    "prm_children",
    "top_p",
    "temperature",
    "max_new_tokens",
    "min_new_tokens",
    "faithful",
    "max_commit_lag",
    "seed",
)
CALL_KWARGS = frozenset(SEARCH_FIELDS) | {
    "on_violation",
    "tools",
    "tool_choice",
    "ls_structured_output_format",
    "response_format",
    "target_entities",
    "model",
    "stream",
}


class ChatSaffron(BaseChatModel):
    """Guarded chat over a local model: Saffron search (MRM-guided, trie-cached) + streaming monitor.

    ``policy``, ``mrm`` and ``monitor`` are each an object or a path; ``policy="smollm2"`` is the
    packaged SmolLM2-135M-Instruct and ``"bundled"`` the shipped MRM / monitor. The default ``"auto"``
    uses the bundled MRM and monitor whenever the policy speaks SmolLM2's vocabulary, and nothing
    otherwise (``method="saffron"`` then asks for an MRM). ``monitor=None`` switches the monitor off.
    ``on_violation``: ``"raise"`` (default) raises :class:`GuardrailViolation`; ``"refuse"`` answers
    with ``refusal_message``; ``"truncate"`` returns the cleared prefix. Both are marked blocked in
    ``response_metadata["saffron"]``.
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True, protected_namespaces=(), populate_by_name=True
    )

    policy: Any = "smollm2"
    mrm: Any = "auto"
    monitor: Any = "auto"
    tokenizer: Any = None
    method: Literal["saffron", "best_of_n", "prm_beam", "greedy"] = "saffron"
    budget: int = 4
    num_samples: int = 8
    prm_children: int = 4
    top_p: float = 0.8
    temperature: float = 1.0
    max_new_tokens: int = Field(128, alias="max_tokens")
    min_new_tokens: int = 1
    faithful: bool = False
    max_commit_lag: int | None = 8
    seed: int = 0
    on_violation: OnViolation = "raise"
    check_prompt: bool = False
    json_max_string_length: int | None = Field(None, ge=1)
    """Cap on free strings in constrained output (tool arguments, structured output): a small model
    decoding greedily can loop inside a string until ``max_tokens`` and never close the JSON. ``None``
    leaves strings unbounded."""
    """Judge the latest user message with the monitor's prompt head before generating (when it has one)."""
    refusal_message: str = DEFAULT_REFUSAL
    model_name: str = Field("saffron", alias="model")
    stop: list[str] | None = Field(None, alias="stop_sequences")

    _engine: SearchEngine = PrivateAttr()
    _monitor: StreamingMonitor | None = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        self._settings({})  # validate the fields now: a bad value fails at construction
        policy = self._load_policy()
        mrm = self._load_mrm(policy)
        self._engine = SearchEngine(policy, mrm)
        self._monitor = self._load_monitor()
        if self.method == "saffron" and mrm is None:
            raise ConfigError(
                "method='saffron' needs a multifurcation reward model: pass mrm= (an object or an adapter folder), "
                "or choose method='greedy' / 'best_of_n'"
            )

    # ------------------------------------------------------------------ construction
    def _load_policy(self) -> LoadedModel:
        if isinstance(self.policy, LoadedModel):
            return self.policy
        if self.tokenizer is not None and not isinstance(self.policy, (str, os.PathLike)):
            return load_policy(self.policy, tokenizer=self.tokenizer, chat=True)
        return load_policy(self.policy, chat=True)

    def _load_mrm(self, policy: LoadedModel) -> MultifurcationRewardModel | None:
        if self.mrm is None or isinstance(self.mrm, MultifurcationRewardModel):
            return self.mrm
        if self.mrm == "auto":
            if self.method != "saffron" or not speaks_smollm2(policy.tokenizer):
                return None
            return load_mrm(BUNDLED, policy_tokenizer=policy.tokenizer)
        return load_mrm(self.mrm, policy_tokenizer=policy.tokenizer)

    def _load_monitor(self) -> StreamingMonitor | None:
        m = self.monitor
        if m is None:
            return None
        if isinstance(m, SCMMonitorModel):
            return SCMMonitor(m)
        policy = self._engine.policy
        if m == "auto":
            m = BUNDLED if speaks_smollm2(policy.tokenizer) else None
            if m is None:
                return None
        if m == BUNDLED:  # the shipped SmolLM2 monitor, on the policy's own backbone
            if self.monitor == BUNDLED:  # "auto" has already compared the vocabularies
                check_vocab_compatible(
                    policy.tokenizer, smollm2_tokenizer(), what="bundled SmolLM2 monitor"
                )
            return SCMMonitor(
                load_monitor(BUNDLED, backbone=policy.model, tokenizer=policy.tokenizer)
            )
        if isinstance(m, (str, os.PathLike)):
            return SCMMonitor(load_monitor(m))
        return m

    @property
    def streaming_monitor(self) -> StreamingMonitor | None:  # duplicate of the metadata branch's: keep one at merge
        """The monitor that guards this model's output (None when it runs unguarded)."""
        return self._monitor

    @property
    def engine(self) -> SearchEngine:
        """The search engine (policy, MRM and their tries)."""
        return self._engine

    @property
    def _llm_type(self) -> str:
        return "saffron"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "policy": self._engine.policy.source,
            **{f: getattr(self, f) for f in SEARCH_FIELDS},
            "on_violation": self.on_violation,
            "monitor": type(self._monitor).__name__ if self._monitor else None,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> Any:
        params = super()._get_ls_params(stop=stop, **kwargs)
        params["ls_provider"] = "saffron"
        params["ls_model_name"] = kwargs.get("model", self.model_name)
        params["ls_temperature"] = kwargs.get("temperature", self.temperature)
        params["ls_max_tokens"] = kwargs.get("max_new_tokens", self.max_new_tokens)
        return params

    # ------------------------------------------------------------------ settings
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

    def _prompt(
        self,
        messages: list[BaseMessage],
        tools: Sequence[dict[str, Any]] | None,
        schema: dict[str, Any] | None = None,
    ) -> tuple[list[int], str]:
        tok = self._engine.policy.tokenizer
        native = template_supports_tools(tok)
        rendered = to_template_messages(
            messages, native_tools=native, tools=None if native else tools
        )
        if schema is not None:  # tell the model what the grammar will enforce
            note = f"Answer only with a JSON value matching this JSON schema:\n{json.dumps(schema)}"
            if rendered[0]["role"] == "system":
                rendered[0] = {**rendered[0], "content": f"{rendered[0]['content']}\n\n{note}"}
            else:
                rendered.insert(0, {"role": "system", "content": note})
        kw: dict[str, Any] = {"tools": list(tools)} if (tools and native) else {}
        try:
            ids = list(
                tok.apply_chat_template(
                    rendered, add_generation_prompt=True, tokenize=True, return_dict=False, **kw
                )
            )
        except Exception as e:  # noqa: BLE001 - jinja raises TemplateError and others
            from saffron_runtime.errors import PromptError

            raise PromptError(
                f"the chat template of {self._engine.policy.source} cannot render these messages: {e}"
            ) from e
        users = [m["content"] for m in rendered if m["role"] == "user"]
        return ids, (users[-1] if users else rendered[-1]["content"])

    def _constraint(
        self, tools: Sequence[dict[str, Any]] | None, tool_choice: Any
    ) -> Grammar | None:
        if not tools or tool_choice in (None, "auto", "none", False):
            return None
        tok = self._engine.policy.tokenizer
        if tool_choice in ("any", "required", True):
            return Grammar.tool_calls(
                tok, list(tools), max_string_length=self.json_max_string_length
            )
        name = (
            tool_choice
            if isinstance(tool_choice, str)
            else tool_choice.get("function", {}).get("name")
        )
        chosen = [t for t in tools if t["function"]["name"] == name]
        if not chosen:
            raise ConfigError(
                f"tool_choice={name!r} names no bound tool; bound: {[t['function']['name'] for t in tools]}"
            )
        return Grammar.tool_calls(tok, chosen, max_string_length=self.json_max_string_length)

    def _start(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        stop_event: threading.Event | None = None,
    ) -> tuple[GuardedGeneration, int, OnViolation]:
        cfg = self._settings(kwargs, stop)
        tools = kwargs.get("tools")
        fmt = kwargs.get("response_format")
        schema = fmt.get("schema") if isinstance(fmt, dict) else None
        ids, prompt_text = self._prompt(messages, tools, schema)
        on_violation = kwargs.get("on_violation", self.on_violation)
        gen = GuardedGeneration(
            self._engine,
            self._monitor,
            ids,
            cfg,
            prompt_text=prompt_text,
            stop_event=stop_event,
            check_prompt=self.check_prompt,
            constraint=Grammar.json_schema(
                self._engine.policy.tokenizer,
                schema,
                compact=True,
                max_string_length=self.json_max_string_length,
            )
            if schema is not None
            else self._constraint(tools, kwargs.get("tool_choice")),
        )
        return gen, len(ids), on_violation

    def _metadata(self, outcome: GuardedOutcome, on_violation: str) -> dict[str, Any]:
        stats = (
            outcome.result.stats.to_dict()
            if outcome.result
            else (outcome.stats.to_dict() if outcome.stats else {})
        )
        return {
            "saffron": {
                "blocked": outcome.blocked,
                "on_violation": on_violation if outcome.blocked else None,
                "verdicts": [v.to_dict() for v in outcome.verdicts],
                "stats": stats,
                "score": outcome.result.score if outcome.result else None,
            },
            "model_name": self.model_name,
        }

    def _final_message(
        self, outcome: GuardedOutcome, n_prompt: int, on_violation: str, tools: Any
    ) -> AIMessage:
        text = outcome.released
        if outcome.blocked:
            if on_violation == "raise":
                assert outcome.verdict is not None
                raise GuardrailViolation(outcome.verdict)
            if on_violation == "refuse":
                text = self.refusal_message
        tool_calls, invalid = [], []
        if tools and not outcome.blocked:
            text, tool_calls, invalid = parse_tool_calls(text)
        n_out = (
            len(outcome.result.token_ids)
            if outcome.result
            else (outcome.stats.policy_tokens if outcome.stats else 0)
        )
        usage = {"input_tokens": n_prompt, "output_tokens": n_out, "total_tokens": n_prompt + n_out}
        return AIMessage(
            content=text,
            tool_calls=tool_calls,
            invalid_tool_calls=invalid,
            usage_metadata=usage,
            response_metadata=self._metadata(outcome, on_violation),
        )

    # ------------------------------------------------------------------ LangChain hooks
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        gen, n_prompt, on_violation = self._start(messages, stop, kwargs)
        for delta in gen:
            if run_manager is not None:
                run_manager.on_llm_new_token(
                    delta, chunk=ChatGenerationChunk(message=AIMessageChunk(content=delta))
                )
        msg = self._final_message(gen.outcome, n_prompt, on_violation, kwargs.get("tools"))
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _chunks(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None,
        kwargs: dict[str, Any],
        stop_event: threading.Event,
    ) -> Iterator[ChatGenerationChunk]:
        """Released text as chunks, then a last chunk with tool calls, usage and metadata."""
        gen, n_prompt, on_violation = self._start(messages, stop, kwargs, stop_event)
        tools = kwargs.get("tools")
        try:
            for delta in gen:
                if not tools:  # with tools, calls are parsed from the whole output: sent at the end
                    yield ChatGenerationChunk(message=AIMessageChunk(content=delta))
        finally:
            stop_event.set()
        final = self._final_message(gen.outcome, n_prompt, on_violation, tools)
        tail = final.content if tools else ""
        if gen.outcome.blocked and on_violation == "refuse":
            tail = ("\n\n" if gen.outcome.released else "") + self.refusal_message
        calls = [
            {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
            for i, c in enumerate(final.tool_calls)
        ]
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content=tail,
                tool_call_chunks=calls,
                usage_metadata=final.usage_metadata,
                response_metadata=final.response_metadata,
                chunk_position="last",
            )
        )

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._chunks(messages, stop, kwargs, threading.Event()):
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
        stop_event = threading.Event()
        done = object()

        def produce() -> None:
            try:
                for chunk in self._chunks(messages, stop, kwargs, stop_event):
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
                    if stop_event.is_set():
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
            stop_event.set()  # cancelling the consumer stops the search
            await asyncio.shield(worker)

    # ------------------------------------------------------------------ structured output
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
        from langchain_core.output_parsers import JsonOutputParser, PydanticOutputParser
        from langchain_core.runnables import RunnableMap, RunnablePassthrough
        from langchain_core.utils.function_calling import convert_to_json_schema
        from langchain_core.utils.pydantic import is_basemodel_subclass

        is_model = isinstance(schema, type) and is_basemodel_subclass(schema)
        if method == "json_mode" and not schema:
            json_schema: dict[str, Any] = {"type": "object"}
        elif is_model:
            json_schema = schema.model_json_schema()  # type: ignore[union-attr]
        else:
            json_schema = convert_to_json_schema(schema)
        llm = self.bind(
            response_format={"type": "json_schema", "schema": json_schema},
            ls_structured_output_format={"kwargs": {"method": method}, "schema": schema},
        )
        parser = PydanticOutputParser(pydantic_object=schema) if is_model else JsonOutputParser()  # type: ignore[arg-type]
        if not include_raw:
            return llm | parser
        assign = RunnablePassthrough.assign(
            parsed=lambda x: parser.invoke(x["raw"]), parsing_error=lambda _: None
        )
        fallback = RunnablePassthrough.assign(parsed=lambda _: None)
        return RunnableMap(raw=llm) | assign.with_fallbacks(
            [fallback], exception_key="parsing_error"
        )

    # ------------------------------------------------------------------ tools
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
