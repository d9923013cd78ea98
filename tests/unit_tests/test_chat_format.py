"""The chat rendering shared by ChatSaffron and the service: response formats and tool-call parsing."""

from __future__ import annotations

import pytest

from saffron_runtime.chat_format import (
    format_tool_call,
    parse_tool_text,
    response_schema,
    template_messages,
)
from saffron_runtime.errors import ConfigError, PromptError

SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


@pytest.mark.parametrize(("fmt", "schema"), [
    (None, None),
    ({"type": "text"}, None),
    ({"type": "json_object"}, {"type": "object"}),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMA}}, SCHEMA),  # OpenAI's shape
    ({"type": "json_schema", "schema": SCHEMA}, SCHEMA),  # ChatSaffron's own
])
def test_response_formats_give_their_schema(fmt, schema):
    assert response_schema(fmt) == schema


@pytest.mark.parametrize("fmt", [{"type": "xml"}, {"type": "json_schema"}, "json", {"type": "json_schema", "json_schema": 3}])
def test_an_unknown_response_format_is_an_error_naming_the_shapes(fmt):
    with pytest.raises(ConfigError, match="response_format must be"):
        response_schema(fmt)


def test_a_call_that_does_not_parse_keeps_its_name_and_raw_text():
    text = format_tool_call("f", {"x": 1}) + '<tool_call>{"name": "g", "arguments": [1]}</tool_call>'
    parsed = parse_tool_text(text)
    assert parsed.calls == [{"name": "f", "args": {"x": 1}}] and parsed.text == ""
    assert parsed.invalid[0]["name"] == "g" and parsed.invalid[0]["raw"].startswith('{"name": "g"')


def test_tool_history_in_text_form_and_natively():
    chat = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": None, "tool_calls": [{"name": "f", "args": {"x": 1}}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"}]
    text = template_messages(chat, native_tools=False, tools=[{"type": "function", "function": {"name": "f"}}])
    assert [m["role"] for m in text] == ["system", "user", "assistant", "user"]
    assert text[2]["content"] == format_tool_call("f", {"x": 1})
    native = template_messages(chat, native_tools=True)
    assert native[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"x": 1}}
    assert native[2] == {"role": "tool", "content": "42", "tool_call_id": "c1"}
    with pytest.raises(PromptError, match="empty"):
        template_messages([], native_tools=False)
