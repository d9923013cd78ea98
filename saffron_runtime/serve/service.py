"""One replica's guarded generation, without any web or Ray code: load the stack once, turn a
validated :class:`ChatRequest` into a :class:`GuardedGeneration`, admit requests up to a queue limit,
and say what a finished (or blocked) run answers.

Searches on one replica run one at a time (a lock around the engine: the engine and its trie are
not thread-safe, and batching across requests is not built, see docs/serving.md); requests beyond
the running one wait, up to ``queue_limit`` in all, and the rest are refused (the app answers 503).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pydantic import ConfigDict, Field

from saffron_runtime.config import Settings
from saffron_runtime.errors import DEFAULT_REFUSAL, ConfigError, OnViolation, PromptError
from saffron_runtime.guarded import GuardedGeneration, GuardedOutcome
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.serve.protocol import ChatRequest, RequestError, saffron_field, usage
from saffron_runtime.stack import StackOptions, build_stack

_FIELD_IN_ERROR = re.compile(r"SearchConfig\.(\w+)")


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
    """Requests a replica holds at once (one running, the rest waiting); more get 503."""
    model_name: str = "saffron"
    """The model id ``/v1/models`` lists and responses carry."""


class Busy(Exception):
    """The replica holds ``queue_limit`` requests already."""


@dataclass
class Prepared:
    """A request ready to run: the generation, its prompt size and what a block becomes."""

    generation: GuardedGeneration
    n_prompt: int
    on_violation: OnViolation
    stop_event: threading.Event
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


class GuardedService:
    """The stack of one replica and the request lifecycle around it."""

    def __init__(self, options: ServiceOptions) -> None:
        self.options = options
        self.defaults = SearchConfig(**options.search)  # bad defaults fail at start, not per request
        self.stack = build_stack(StackOptions(
            policy=options.policy, mrm=options.mrm, monitor=options.monitor, prm=options.prm,
            methods=(self.defaults.method,),
        ))
        self._engine_lock = threading.Lock()
        self._count_lock = threading.Lock()
        self.pending = 0
        """Requests admitted and not yet finished (running or waiting for the engine)."""

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
        if request.tools:
            raise RequestError("tools", "tool calling is not served yet; call without tools "
                               "(ChatSaffron with a local model supports them)")
        cfg = self.config(request)
        try:
            engine = self.stack.engine_for(cfg.method)
        except ConfigError as e:
            raise RequestError("method", str(e)) from None
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in request.messages]
        try:
            ids = list(engine.policy.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=True, return_dict=False))
        except Exception as e:  # noqa: BLE001 - jinja raises TemplateError and others
            raise RequestError("messages", f"the chat template cannot render them: {e}") from None
        users = [m["content"] for m in messages if m["role"] == "user"]
        gen = GuardedGeneration(
            engine, self.stack.streaming_monitor, ids, cfg,
            prompt_text=users[-1] if users else messages[-1]["content"], stop_event=stop_event,
        )
        return Prepared(gen, len(ids), request.on_violation or self.options.on_violation, stop_event)

    def run(self, prepared: Prepared) -> Iterator[str]:
        """Released text deltas, one search at a time on this replica (waits for the engine)."""
        with self._engine_lock:
            if prepared.stop_event.is_set():  # the client left while waiting
                return
            try:
                yield from prepared.generation
            except PromptError as e:
                raise RequestError("messages", str(e)) from None

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
            return Final("", reason, counts, meta)
        assert out.verdict is not None
        tail, error = "", None
        if prepared.on_violation == "refuse":
            tail = ("\n\n" if out.released else "") + self.options.refusal_message
        elif prepared.on_violation == "raise":
            error = f"guardrail violation ({out.verdict.rule}): {out.verdict.reason or 'blocked'}"
        return Final(tail, "content_filter", counts, meta, error)
