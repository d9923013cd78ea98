"""LangChain messages <-> the policy's chat template, and our tool-call text format.

Templates that know tools (they reference ``tools`` and render ``tool_calls``) get them natively.
Others, like SmolLM2's ChatML template, get our documented tool prompt: a system paragraph listing
the tools as JSON schemas and asking for ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``,
the Hermes/Qwen convention. Calls in the output are parsed back into ``tool_calls``.
"""

from __future__ import annotations

import json
import re
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
from transformers import PreTrainedTokenizerBase

from saffron_runtime.errors import PromptError

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
TOOL_CALL_OPEN = "<tool_call>"

TOOL_PROMPT = (
    "You can call functions. The available functions, as JSON schemas, are:\n{tools}\n"
    "To call a function, answer with one line per call, exactly in this form and nothing else:\n"
    '<tool_call>{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}</tool_call>'
)


def template_supports_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the chat template renders ``tools`` itself (it mentions the variable)."""
    tmpl = tokenizer.chat_template
    if isinstance(tmpl, dict):
        tmpl = tmpl.get("tool_use") or tmpl.get("default") or ""
    return bool(tmpl) and "tools" in str(tmpl)


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


def format_tool_call(name: str, args: dict[str, Any]) -> str:
    """Our text form of one tool call (also used to render past calls in history)."""
    return f"{TOOL_CALL_OPEN}{json.dumps({'name': name, 'arguments': args}, ensure_ascii=False)}</tool_call>"


def to_template_messages(
    messages: Sequence[BaseMessage],
    *,
    native_tools: bool,
    tools: Sequence[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Convert LangChain messages to the list of dicts ``apply_chat_template`` takes."""
    if not messages:
        raise PromptError(
            "the message list is empty; pass at least one message (e.g. a HumanMessage)"
        )
    out: list[dict[str, Any]] = []
    for m in messages:
        if isinstance(m, SystemMessage):
            out.append({"role": "system", "content": _text(m)})
        elif isinstance(m, HumanMessage):
            out.append({"role": "user", "content": _text(m)})
        elif isinstance(m, AIMessage):
            text = _text(m)
            if m.tool_calls and native_tools:
                calls = [
                    {"type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                    for c in m.tool_calls
                ]
                out.append({"role": "assistant", "content": text, "tool_calls": calls})
            else:
                rendered = "\n".join(format_tool_call(c["name"], c["args"]) for c in m.tool_calls)
                out.append(
                    {"role": "assistant", "content": "\n".join(x for x in (text, rendered) if x)}
                )
        elif isinstance(m, ToolMessage):
            if native_tools:
                out.append({"role": "tool", "content": _text(m), "tool_call_id": m.tool_call_id})
            else:
                body = f"<tool_response>\n{_text(m)}\n</tool_response>"
                out.append({"role": "user", "content": body})
        elif isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": _text(m)})
        else:
            raise PromptError(
                f"cannot render a {type(m).__name__} in a chat template; use System, Human, AI, Tool "
                f"or Chat messages"
            )
    if tools and not native_tools:
        schema = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        note = TOOL_PROMPT.format(tools=schema)
        if out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{note}"}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out


def parse_tool_calls(text: str) -> tuple[str, list[ToolCall], list[InvalidToolCall]]:
    """Split model output into (text without calls, valid tool calls, invalid ones)."""
    calls: list[ToolCall] = []
    invalid: list[InvalidToolCall] = []
    for raw in TOOL_CALL_RE.findall(text):
        call_id = f"call_{uuid.uuid4().hex[:24]}"
        try:
            obj = json.loads(raw)
            name, args = obj["name"], obj.get("arguments", obj.get("parameters", {}))
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError("name must be a string and arguments an object")
            calls.append(ToolCall(name=name, args=args, id=call_id, type="tool_call"))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            invalid.append(
                InvalidToolCall(
                    name=None, args=raw, id=call_id, error=str(e), type="invalid_tool_call"
                )
            )
    rest = TOOL_CALL_RE.sub("", text).strip() if (calls or invalid) else text
    return rest, calls, invalid
