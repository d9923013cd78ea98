"""How a chat becomes the policy's prompt, and how the output becomes tool calls.

A chat here is a list of plain messages: ``{"role", "content"}``, plus ``"tool_calls": [{"name",
"args"}]`` on an assistant turn and ``"tool_call_id"`` on a tool result. ChatSaffron builds it from
LangChain messages and the service from OpenAI messages, so a tool call, a tool result or a response
schema reads the same locally and over HTTP.

Templates that know tools (they reference ``tools``) get them natively. Others, like SmolLM2's ChatML
template, get our documented tool prompt: a system paragraph listing the tools as JSON schemas and
asking for ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` (the Hermes/Qwen convention).
A forced tool call (``tool_choice``) or a response schema becomes a decoding grammar.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from transformers import PreTrainedTokenizerBase

from saffron_runtime.constraints import Grammar
from saffron_runtime.errors import ConfigError, PromptError

TOOL_CALL_RE = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.DOTALL)
TOOL_CALL_OPEN = "<tool_call>"
_NAME_RE = re.compile(r'"name"\s*:\s*"([^"]*)"')

TOOL_PROMPT = (
    "You can call functions. The available functions, as JSON schemas, are:\n{tools}\n"
    "To call a function, answer with one line per call, exactly in this form and nothing else:\n"
    '<tool_call>{{"name": "<function name>", "arguments": {{<arguments as JSON>}}}}</tool_call>'
)
SCHEMA_NOTE = "Answer only with a JSON value matching this JSON schema:\n{schema}"


def template_supports_tools(tokenizer: PreTrainedTokenizerBase) -> bool:
    """True when the chat template renders ``tools`` itself (it mentions the variable)."""
    tmpl = tokenizer.chat_template
    if isinstance(tmpl, dict):
        tmpl = tmpl.get("tool_use") or tmpl.get("default") or ""
    return bool(tmpl) and "tools" in str(tmpl)


def format_tool_call(name: str, args: Mapping[str, Any]) -> str:
    """Our text form of one tool call (also how past calls are rendered in history)."""
    body = json.dumps({"name": name, "arguments": dict(args)}, ensure_ascii=False)
    return f"{TOOL_CALL_OPEN}{body}</tool_call>"


def _with_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    """The note appended to the system message, or a system message of its own first."""
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{note}"}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def template_messages(
    chat: Sequence[Mapping[str, Any]],
    *,
    native_tools: bool,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The list of dicts ``apply_chat_template`` takes: tool calls and results natively, or in our
    text form with the tool prompt (when ``tools`` is given and the template does not take them)."""
    if not chat:
        raise PromptError("the message list is empty; pass at least one message (e.g. a user message)")
    out: list[dict[str, Any]] = []
    for m in chat:
        role, text, calls = m["role"], m.get("content") or "", m.get("tool_calls") or []
        if role == "assistant" and calls and native_tools:
            native = [{"type": "function", "function": {"name": c["name"], "arguments": c["args"]}}
                      for c in calls]
            out.append({"role": "assistant", "content": text, "tool_calls": native})
        elif role == "assistant":
            rendered = "\n".join(format_tool_call(c["name"], c["args"]) for c in calls)
            out.append({"role": "assistant", "content": "\n".join(x for x in (text, rendered) if x)})
        elif role == "tool" and native_tools:
            out.append({"role": "tool", "content": text, "tool_call_id": m.get("tool_call_id")})
        elif role == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>"})
        else:
            out.append({"role": role, "content": text})
    if tools and not native_tools:
        listed = "\n".join(json.dumps(dict(t), ensure_ascii=False) for t in tools)
        out = _with_system_note(out, TOOL_PROMPT.format(tools=listed))
    return out


def render_chat(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    chat: Sequence[Mapping[str, Any]],
    tools: Sequence[Mapping[str, Any]] | None = None,
    schema: Mapping[str, Any] | None = None,
) -> tuple[list[int], str]:
    """Prompt ids through the chat template, and the text the monitor and reward models read as the
    prompt (the latest user message). A schema is announced in the system prompt (the grammar
    enforces it; a small model writes better JSON when it is told which)."""
    native = template_supports_tools(tokenizer)
    rendered = template_messages(chat, native_tools=native, tools=None if native else tools)
    if schema is not None:
        rendered = _with_system_note(rendered, SCHEMA_NOTE.format(schema=json.dumps(schema)))
    kw: dict[str, Any] = {"tools": [dict(t) for t in tools]} if (tools and native) else {}
    try:
        ids = list(tokenizer.apply_chat_template(
            rendered, add_generation_prompt=True, tokenize=True, return_dict=False, **kw))
    except Exception as e:  # noqa: BLE001 - jinja raises TemplateError and others
        raise PromptError(f"the chat template of {source} cannot render these messages: {e}") from e
    users = [m["content"] for m in rendered if m["role"] == "user"]
    return ids, (users[-1] if users else rendered[-1]["content"])


@dataclass
class ParsedOutput:
    """An output split into its text and its tool calls."""

    text: str
    """The output without the calls (the whole output when it has none)."""
    calls: list[dict[str, Any]] = field(default_factory=list)
    """Valid calls: ``{"name": str, "args": dict}``."""
    invalid: list[dict[str, Any]] = field(default_factory=list)
    """Calls that do not parse: ``{"name": str | None, "raw": str, "error": str}``."""


def parse_tool_text(text: str) -> ParsedOutput:
    """Read the ``<tool_call>...</tool_call>`` blocks of an output."""
    parsed = ParsedOutput(text)
    for raw in TOOL_CALL_RE.findall(text):
        try:
            obj = json.loads(raw)
            name, args = obj["name"], obj.get("arguments", obj.get("parameters", {}))
            if not isinstance(name, str) or not isinstance(args, dict):
                raise TypeError("name must be a string and arguments an object")
            parsed.calls.append({"name": name, "args": args})
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
            m = _NAME_RE.search(raw)
            parsed.invalid.append({"name": m.group(1) if m else None, "raw": raw, "error": str(e)})
    if parsed.calls or parsed.invalid:
        parsed.text = TOOL_CALL_RE.sub("", text).strip()
    return parsed


def response_schema(response_format: Any) -> dict[str, Any] | None:
    """The JSON schema a ``response_format`` asks for: OpenAI's ``{"type": "json_schema",
    "json_schema": {"schema": ...}}`` or ``{"type": "json_object"}``, ChatSaffron's ``{"type":
    "json_schema", "schema": ...}``; ``None`` or ``{"type": "text"}`` ask for none."""
    if response_format is None:
        return None
    kind = response_format.get("type") if isinstance(response_format, Mapping) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "object"}
    if kind == "json_schema":
        inner = response_format.get("json_schema")
        schema = inner.get("schema") if isinstance(inner, Mapping) else response_format.get("schema")
        if isinstance(schema, Mapping):
            return dict(schema)
    raise ConfigError(
        "response_format must be {'type': 'json_schema', 'json_schema': {'schema': {...}}}, "
        f"{{'type': 'json_object'}} or {{'type': 'text'}}; got {response_format!r}"
    )


def tool_constraint(
    tokenizer: PreTrainedTokenizerBase,
    tools: Sequence[Mapping[str, Any]] | None,
    tool_choice: Any,
    max_string_length: int | None = None,
) -> Grammar | None:
    """The grammar of a forced tool call ("any"/"required"/True or one tool's name), else None."""
    if not tools or tool_choice in (None, "auto", "none", False):
        return None
    listed = [dict(t) for t in tools]
    if tool_choice in ("any", "required", True):
        return Grammar.tool_calls(tokenizer, listed, max_string_length=max_string_length)
    name = tool_choice if isinstance(tool_choice, str) else (tool_choice or {}).get("function", {}).get("name")
    chosen = [t for t in listed if t["function"]["name"] == name]
    if not chosen:
        bound = [t["function"]["name"] for t in listed]
        raise ConfigError(f"tool_choice={name!r} names no bound tool; bound: {bound}")
    return Grammar.tool_calls(tokenizer, chosen, max_string_length=max_string_length)


def schema_constraint(
    tokenizer: PreTrainedTokenizerBase, schema: Mapping[str, Any], max_string_length: int | None = None
) -> Grammar:
    """The grammar of one JSON value matching ``schema`` (compact: no free whitespace)."""
    return Grammar.json_schema(tokenizer, dict(schema), compact=True, max_string_length=max_string_length)
