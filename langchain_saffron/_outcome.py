"""What a guarded run becomes in LangChain: the final AIMessage (text, tool calls, usage and the
``saffron`` metadata), the last stream chunk, and the stop signals of guard callbacks."""

from __future__ import annotations

import json
import threading
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGenerationChunk

from langchain_saffron.messages import parse_tool_calls
from saffron_runtime.errors import GuardrailViolation
from saffron_runtime.guarded import GuardedOutcome


def saffron_metadata(outcome: GuardedOutcome, on_violation: str, model_name: str) -> dict[str, Any]:
    """``response_metadata``: blocked or not, every verdict, the search stats and score."""
    stats = outcome.result.stats if outcome.result else outcome.stats
    return {
        "saffron": {
            "blocked": outcome.blocked,
            "on_violation": on_violation if outcome.blocked else None,
            "verdicts": [v.to_dict() for v in outcome.verdicts],
            "stats": stats.to_dict() if stats else {},
            "score": outcome.result.score if outcome.result else None,
            "monitor_path": outcome.monitor_path,
        },
        "model_name": model_name,
    }


def final_message(
    outcome: GuardedOutcome,
    n_prompt: int,
    *,
    on_violation: str,
    tools: Any,
    refusal_message: str,
    model_name: str,
) -> AIMessage:
    """The answer as LangChain sees it; raises GuardrailViolation when blocked under "raise"."""
    text = outcome.released
    if outcome.blocked:
        if on_violation == "raise":
            assert outcome.verdict is not None
            raise GuardrailViolation(outcome.verdict)
        if on_violation == "refuse":
            text = refusal_message
    tool_calls, invalid = [], []
    if tools and not outcome.blocked:
        text, tool_calls, invalid = parse_tool_calls(text)
    if outcome.result:
        n_out = len(outcome.result.token_ids)
    else:
        n_out = outcome.stats.policy_tokens if outcome.stats else 0
    usage = {"input_tokens": n_prompt, "output_tokens": n_out, "total_tokens": n_prompt + n_out}
    return AIMessage(
        content=text,
        tool_calls=tool_calls,
        invalid_tool_calls=invalid,
        usage_metadata=usage,  # type: ignore[arg-type]
        response_metadata=saffron_metadata(outcome, on_violation, model_name),
    )


def last_chunk(
    final: AIMessage, outcome: GuardedOutcome, *, on_violation: str, tools: Any, refusal: str
) -> ChatGenerationChunk:
    """The stream's last chunk: tool calls (parsed from the whole output), usage and metadata, and the
    refusal when the run was blocked under "refuse" (the cleared text before it was already sent)."""
    tail = final.content if tools else ""
    if outcome.blocked and on_violation == "refuse":
        tail = ("\n\n" if outcome.released else "") + refusal
    calls = [
        {"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
        for i, c in enumerate(final.tool_calls)
    ]
    return ChatGenerationChunk(
        message=AIMessageChunk(
            content=tail,
            tool_call_chunks=calls,  # type: ignore[arg-type]
            usage_metadata=final.usage_metadata,
            response_metadata=final.response_metadata,
            chunk_position="last",
        )
    )


def guard_stop_events(run_manager: Any) -> list[threading.Event]:
    """The stop signals that guard callbacks of this run expose (duck-typed: a handler with
    ``stop_event(run_id) -> threading.Event``, as SaffronGuardCallbackHandler has)."""
    if run_manager is None:
        return []
    events: list[threading.Event] = []
    seen: set[int] = set()
    for handler in [*run_manager.handlers, *run_manager.inheritable_handlers]:
        get = getattr(handler, "stop_event", None)
        if id(handler) in seen or not callable(get):
            continue
        seen.add(id(handler))
        event = get(run_manager.run_id)
        if isinstance(event, threading.Event):
            events.append(event)
    return events
