"""How ChatSaffron turns LangChain messages into policy prompt ids, and tools or a schema into the
grammar that constrains decoding."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from transformers import PreTrainedTokenizerBase

from langchain_saffron.messages import template_supports_tools, to_template_messages
from saffron_runtime.constraints import Grammar
from saffron_runtime.errors import ConfigError, PromptError


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    messages: list[BaseMessage],
    tools: Sequence[dict[str, Any]] | None,
    schema: dict[str, Any] | None = None,
) -> tuple[list[int], str]:
    """Prompt ids through the chat template, and the text the monitor and reward models read as the
    prompt (the latest user message). Tools go to the template when it takes them, else into the text."""
    native = template_supports_tools(tokenizer)
    rendered = to_template_messages(messages, native_tools=native, tools=None if native else tools)
    if schema is not None:  # tell the model what the grammar will enforce
        note = f"Answer only with a JSON value matching this JSON schema:\n{json.dumps(schema)}"
        if rendered[0]["role"] == "system":
            rendered[0] = {**rendered[0], "content": f"{rendered[0]['content']}\n\n{note}"}
        else:
            rendered.insert(0, {"role": "system", "content": note})
    kw: dict[str, Any] = {"tools": list(tools)} if (tools and native) else {}
    try:
        ids = list(
            tokenizer.apply_chat_template(
                rendered, add_generation_prompt=True, tokenize=True, return_dict=False, **kw
            )
        )
    except Exception as e:  # noqa: BLE001 - jinja raises TemplateError and others
        raise PromptError(f"the chat template of {source} cannot render these messages: {e}") from e
    users = [m["content"] for m in rendered if m["role"] == "user"]
    return ids, (users[-1] if users else rendered[-1]["content"])


def tool_constraint(
    tokenizer: PreTrainedTokenizerBase,
    tools: Sequence[dict[str, Any]] | None,
    tool_choice: Any,
    max_string_length: int | None,
) -> Grammar | None:
    """The grammar of a forced tool call ("any"/"required"/True or one tool's name), else None."""
    if not tools or tool_choice in (None, "auto", "none", False):
        return None
    if tool_choice in ("any", "required", True):
        return Grammar.tool_calls(tokenizer, list(tools), max_string_length=max_string_length)
    name = tool_choice if isinstance(tool_choice, str) else tool_choice.get("function", {}).get("name")
    chosen = [t for t in tools if t["function"]["name"] == name]
    if not chosen:
        raise ConfigError(
            f"tool_choice={name!r} names no bound tool; bound: {[t['function']['name'] for t in tools]}"
        )
    return Grammar.tool_calls(tokenizer, chosen, max_string_length=max_string_length)


def output_constraint(
    tokenizer: PreTrainedTokenizerBase,
    kwargs: dict[str, Any],
    max_string_length: int | None,
) -> tuple[Grammar | None, dict[str, Any] | None]:
    """The grammar of one call (a response schema first, else a forced tool call) and the schema."""
    fmt = kwargs.get("response_format")
    schema = fmt.get("schema") if isinstance(fmt, dict) else None
    if schema is not None:
        grammar = Grammar.json_schema(
            tokenizer, schema, compact=True, max_string_length=max_string_length
        )
        return grammar, schema
    return tool_constraint(
        tokenizer, kwargs.get("tools"), kwargs.get("tool_choice"), max_string_length
    ), None
