"""LangChain messages <-> the plain chat of :mod:`saffron_runtime.chat_format` (which renders the
tool prompt and reads tool calls back), and parsed calls as LangChain's ``ToolCall`` objects."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.tool import InvalidToolCall, ToolCall

from saffron_runtime.chat_format import (
    format_tool_call,
    parse_tool_text,
    template_messages,
    template_supports_tools,
)
from saffron_runtime.errors import PromptError

__all__ = ["format_tool_call", "parse_tool_calls", "template_supports_tools", "to_chat",
           "to_template_messages"]


def _text(message: BaseMessage) -> str:
    content = message.content
    if isinstance(content, str):
        return content
    parts = []
    known = {c.get("id") for c in getattr(message, "tool_calls", None) or []}
    for block in content:
        if isinstance(block, str):
            parts.append(block)
        elif isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif (
            isinstance(message, AIMessage)
            and isinstance(block, dict)
            and block.get("type") in ("tool_use", "tool_call")
        ):
            # a provider-format call block (e.g. Anthropic's tool_use): rendered from tool_calls
            # when it is one of them, else in our tool-call text form
            if block.get("id") not in known:
                args = block.get("input", block.get("args", {}))
                parts.append(format_tool_call(str(block.get("name", "")), dict(args or {})))
        else:
            kind = block.get("type") if isinstance(block, dict) else type(block).__name__
            raise PromptError(
                f"{type(message).__name__} has a {kind!r} content block; this local text model only "
                f"reads text. Remove the block or describe it in text"
            )
    return "".join(parts)


def to_chat(messages: Sequence[BaseMessage]) -> list[dict[str, Any]]:
    """LangChain messages as the plain chat ``saffron_runtime.chat_format`` renders."""
    if not messages:
        raise PromptError(
            "the message list is empty; pass at least one message (e.g. a HumanMessage)"
        )
    chat: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            chat.append({"role": "system", "content": _text(m)})
        elif isinstance(m, HumanMessage):
            chat.append({"role": "user", "content": _text(m)})
        elif isinstance(m, AIMessage):
            calls = [{"name": c["name"], "args": c["args"]} for c in m.tool_calls]
            chat.append({"role": "assistant", "content": _text(m), "tool_calls": calls})
        elif isinstance(m, ToolMessage):
            chat.append({"role": "tool", "content": _text(m), "tool_call_id": m.tool_call_id})
        elif isinstance(m, ChatMessage):
            chat.append({"role": m.role, "content": _text(m)})
        else:
            raise PromptError(
                f"cannot render a {type(m).__name__} in a chat template; use System, Human, AI, Tool "
                f"or Chat messages"
            )
    return chat


def to_template_messages(
    messages: Sequence[BaseMessage],
    *,
    native_tools: bool,
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Convert LangChain messages to the list of dicts ``apply_chat_template`` takes."""
    return template_messages(to_chat(messages), native_tools=native_tools, tools=tools)


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split model output into (text without calls, valid tool calls, invalid ones)."""
    parsed = parse_tool_text(text)
    calls = [ToolCall(name=c["name"], args=c["args"], id=_call_id(), type="tool_call")
             for c in parsed.calls]
    invalid = [InvalidToolCall(name=c["name"], args=c["raw"], id=_call_id(), error=c["error"],
                               type="invalid_tool_call") for c in parsed.invalid]
    return parsed.text, calls, invalid


def _call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
