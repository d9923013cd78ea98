"""One replica's guarded generation, without any web or Ray code: load the stack once, turn a
validated :class:`ChatRequest` into a :class:`GuardedGeneration`, admit requests up to a queue limit,
and say what a finished (or blocked) run answers.

Up to ``max_batch`` searches run at once on one replica, each in its own worker thread, and a
:class:`~saffron_runtime.cache.batcher.StepBatcher` on the replica's tries runs the decode steps of
all of them in one forward per model (their prompt prefills run one forward each). Requests beyond
``max_batch`` wait for a slot, up to ``queue_limit`` in all; the rest are refused (the app answers 503).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field

from saffron_runtime.cache.batcher import StepBatcher
from saffron_runtime.chat_format import (
    parse_tool_text,
    render_chat,
    response_schema,
    schema_constraint,
    tool_constraint,
)
from saffron_runtime.config import Settings
from saffron_runtime.constraints import Grammar
from saffron_runtime.errors import DEFAULT_REFUSAL, ConfigError, OnViolation, PromptError
from saffron_runtime.guarded import GuardedGeneration, GuardedOutcome
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.engine import SearchEngine
from saffron_runtime.serve.protocol import (
    ChatRequest,
    RequestError,
    openai_tool_calls,
    saffron_field,
    usage,
)
from saffron_runtime.stack import StackOptions, build_stack

_FIELD_IN_ERROR = re.compile(r"SearchConfig\.(\w+)")
_SLOT_POLL_S = 0.05  # a request waiting for a slot checks its stop event this often


class ServiceOptions(Settings):
    """What a replica loads and its defaults (plain values: Ray sends them to every replica)."""

    model_config = ConfigDict(extra="forbid")

    policy: str = "smollm2"
    """The policy: "smollm2", a folder or a .gguf file."""
    mrm: str | None = "auto"
    """The MRM: "auto", "bundled", an adapter folder or None."""
    monitor: str | None = "auto"
    """The streaming monitor: "auto", "bundled", a monitor folder or None (unwatched)."""
    prm: str | None = "auto"
    """The PRM of prm_beam / Best-of-N: "auto", "bundled", a monitor folder or None."""
    search: dict[str, Any] = Field(default_factory=dict)
    """Default search settings (SearchFields names); a request's fields override them."""
    on_violation: OnViolation = "raise"
    """What a blocked answer becomes unless the request says: an error event, a refusal, the prefix."""
    refusal_message: str = DEFAULT_REFUSAL
    """The answer under ``on_violation="refuse"``."""
    queue_limit: int = Field(8, ge=1, le=4096)
    """Requests a replica holds at once (up to ``max_batch`` running, the rest waiting); more get 503."""
    max_batch: int = Field(8, ge=1, le=1024)
    """Searches a replica steps together, one forward per model per step (1: one at a time)."""
    batch_window_ms: float = Field(20.0, ge=0.0, le=1000.0)
    """How long a step waits for a straggler (a run busy between its steps) before it goes without."""
    model_name: str = "saffron"
    """The model id ``/v1/models`` lists and responses carry."""
    json_max_string_length: int | None = Field(None, ge=1)
    """Cap on free strings in constrained output unless the request says (see ChatSaffron's field)."""


class Busy(Exception):
    """The replica holds ``queue_limit`` requests already."""


@dataclass
class Prepared:
    """A request ready to run: the generation, its prompt size and what a block becomes."""

    generation: GuardedGeneration
    n_prompt: int
    on_violation: OnViolation
    stop_event: threading.Event
    tools: bool = False
    """Tools were bound: the output is read for tool calls at the end (no text streams before)."""
    admitted: bool = False


@dataclass
class Final:
    """What the end of a run answers: the text still to send, why it ended, usage and verdicts."""

    tail: str
    finish_reason: str
    usage: dict[str, int]
    saffron: dict[str, Any]
    error: str | None = None
    """Set under ``on_violation="raise"`` when blocked: the message of the error event / 400."""
    tool_calls: list[dict[str, Any]] | None = None
    """The calls read from the output (OpenAI's shape), when tools were bound."""


class GuardedService:
    """The stack of one replica and the request lifecycle around it."""

    def __init__(self, options: ServiceOptions) -> None:
        self.options = options
        self.defaults = SearchConfig(**options.search)  # bad defaults fail at start, not per request
        self.stack = build_stack(StackOptions(
            policy=options.policy, mrm=options.mrm, monitor=options.monitor, prm=options.prm,
            methods=(self.defaults.method,),
        ))
        self._slots = threading.BoundedSemaphore(options.max_batch)
        self.batcher: StepBatcher | None = None
        """Merges the running searches' steps (None when ``max_batch`` is 1)."""
        if options.max_batch > 1:
            self.batcher = StepBatcher(window_s=options.batch_window_ms / 1000,
                                       max_batch=options.max_batch)
        self.executor = ThreadPoolExecutor(max_workers=options.queue_limit,
                                           thread_name_prefix="saffron-search")
        """One worker thread per admitted request (the event loop's default pool is smaller)."""
        self._count_lock = threading.Lock()
        self.pending = 0
        """Requests admitted and not yet finished (running or waiting for a slot)."""
        self.running = 0
        """Searches running now (at most ``max_batch``)."""

    # ------------------------------------------------------------------ admission
    def admit(self, prepared: Prepared) -> None:
        """Count one more request; raise :class:`Busy` past the queue limit."""
        with self._count_lock:
            if self.pending >= self.options.queue_limit:
                raise Busy
            self.pending += 1
            prepared.admitted = True

    def release(self, prepared: Prepared) -> None:
        """A request admitted by :meth:`admit` has finished (a second call does nothing)."""
        with self._count_lock:
            if prepared.admitted:
                prepared.admitted = False
                self.pending -= 1

    # ------------------------------------------------------------------ one request
    def config(self, request: ChatRequest) -> SearchConfig:
        """Defaults, then the request's search settings and stop strings; a bad one names its field."""
        values = {**self.defaults.model_dump(exclude={"stop"}), **request.search_settings()}
        try:
            return SearchConfig(**values, stop=list(request.stop or self.defaults.stop))
        except ConfigError as e:
            m = _FIELD_IN_ERROR.search(str(e))
            raise RequestError(m.group(1) if m else "search settings", str(e)) from None

    def prepare(self, request: ChatRequest, stop_event: threading.Event) -> Prepared:
        """Render the prompt and build the guarded generation (nothing runs yet)."""
        cfg = self.config(request)
        try:
            engine = self.stack.engine_for(cfg.method)
        except ConfigError as e:
            raise RequestError("method", str(e)) from None
        tok = engine.policy.tokenizer
        constraint, schema = self.constraint(request, tok)
        try:
            ids, prompt_text = render_chat(tok, engine.policy.source, request.chat(),
                                           request.tools, schema)
        except PromptError as e:
            raise RequestError("messages", str(e)) from None
        gen = GuardedGeneration(engine, self.stack.streaming_monitor, ids, cfg,
                                prompt_text=prompt_text, stop_event=stop_event,
                                constraint=constraint)
        return Prepared(gen, len(ids), request.on_violation or self.options.on_violation,
                        stop_event, tools=bool(request.tools))

    def constraint(self, request: ChatRequest, tokenizer: Any) -> tuple[Grammar | None, dict[str, Any] | None]:
        """The grammar of a response schema or a forced tool call, and the schema; a bad one names
        ``response_format``, ``tool_choice`` or ``tools``."""
        limit = request.json_max_string_length or self.options.json_max_string_length
        try:
            schema = response_schema(request.response_format)
            if schema is not None:
                return schema_constraint(tokenizer, schema, limit), schema
        except ConfigError as e:
            raise RequestError("response_format", str(e)) from None
        try:
            return tool_constraint(tokenizer, request.tools, request.tool_choice, limit), None
        except ConfigError as e:
            raise RequestError("tool_choice" if "tool_choice" in str(e) else "tools", str(e)) from None

    def run(self, prepared: Prepared) -> Iterator[str]:
        """Released text deltas; waits for one of the ``max_batch`` slots, then steps with the rest.
        Iterate it in one thread (its search joins the batcher as that thread)."""
        while not self._slots.acquire(timeout=_SLOT_POLL_S):
            if prepared.stop_event.is_set():  # the client left while waiting
                return
        with self._count_lock:
            self.running += 1
        try:
            if prepared.stop_event.is_set():
                return
            with self._batched(prepared.generation.engine):
                yield from prepared.generation
        except PromptError as e:
            raise RequestError("messages", str(e)) from None
        finally:
            with self._count_lock:
                self.running -= 1
            self._slots.release()

    def _batched(self, engine: SearchEngine) -> AbstractContextManager[None]:
        """Membership of the step batcher on this engine's tries (the engine may be new: a method
        that needs another model builds one)."""
        if self.batcher is None:
            return nullcontext()
        self.batcher.attach(engine.policy_cache, engine.mrm_cache, engine.prm_cache)
        return self.batcher.member()

    def final(self, prepared: Prepared) -> Final:
        """The end of a run as the client sees it (see ``on_violation``)."""
        out: GuardedOutcome = prepared.generation.outcome
        stats = out.result.stats if out.result else out.stats
        n_out = len(out.result.token_ids) if out.result else (stats.policy_tokens if stats else 0)
        meta = saffron_field(
            blocked=out.blocked, on_violation=prepared.on_violation, verdicts=out.verdicts,
            stats=stats.to_dict() if stats else None,
            score=out.result.score if out.result else None,
            monitor_path=out.monitor_path,
        )
        counts = usage(prepared.n_prompt, n_out)
        if not out.blocked:
            reason = "length" if n_out >= prepared.generation.config.max_new_tokens else "stop"
            if not prepared.tools:
                return Final("", reason, counts, meta)
            parsed = parse_tool_text(out.released)
            calls = openai_tool_calls(parsed)
            return Final(parsed.text, "tool_calls" if calls else reason, counts, meta,
                         tool_calls=calls)
        assert out.verdict is not None
        tail, error = "", None
        if prepared.on_violation == "refuse":
            sent = out.released and not prepared.tools  # with tools nothing was streamed yet
            tail = ("\n\n" if sent else "") + self.options.refusal_message
        elif prepared.on_violation == "raise":
            error = f"guardrail violation ({out.verdict.rule}): {out.verdict.reason or 'blocked'}"
        elif prepared.tools:  # truncate: the cleared prefix, held back until now
            tail = out.released
        return Final(tail, "content_filter", counts, meta, error)
