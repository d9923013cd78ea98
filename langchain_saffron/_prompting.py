"""How ChatSaffron turns LangChain messages and call settings into policy prompt ids and the grammar
that constrains decoding (the rendering itself is :mod:`saffron_runtime.chat_format`'s)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.messages import BaseMessage
from transformers import PreTrainedTokenizerBase

from langchain_saffron.messages import to_chat
from saffron_runtime.chat_format import (
    render_chat,
    response_schema,
    schema_constraint,
    tool_constraint,
)
from saffron_runtime.constraints import Grammar


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    source: str,
    messages: list[BaseMessage],
    tools: Sequence[dict[str, Any]] | None,
    schema: dict[str, Any] | None = None,
) -> tuple[list[int], str]:
    """Prompt ids through the chat template, and the latest user message (what the monitor and
    reward models read as the prompt)."""
    return render_chat(tokenizer, source, to_chat(messages), tools, schema)


def output_constraint(
    tokenizer: PreTrainedTokenizerBase,
    kwargs: dict[str, Any],
    max_string_length: int | None,
) -> tuple[Grammar | None, dict[str, Any] | None]:
    """The grammar of one call (a response schema first, else a forced tool call) and the schema."""
    schema = response_schema(kwargs.get("response_format"))
    if schema is not None:
        return schema_constraint(tokenizer, schema, max_string_length), schema
    return tool_constraint(
        tokenizer, kwargs.get("tools"), kwargs.get("tool_choice"), max_string_length
    ), None
