"""LangChain messages -> chat template dicts, the tool prompt, and tool-call parsing."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.base import BaseMessage

from langchain_saffron.messages import (
    format_tool_call,
    parse_tool_calls,
    to_template_messages,
)
from saffron_runtime.errors import PromptError

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


def test_roles_and_tool_history_without_native_tools(tiny):
    msgs = [
        SystemMessage("be brief"),
        HumanMessage("weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
        ToolMessage("sunny, 21C", tool_call_id="c1"),
    ]
    out = to_template_messages(msgs, native_tools=False, tools=[WEATHER])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("be brief\n\nYou can call functions") and '"get_weather"' in out[0]["content"]
    assert out[2]["content"] == '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert out[3]["content"] == "<tool_response>\nsunny, 21C\n</tool_response>"
    text = tiny.tokenizer.apply_chat_template(out, tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n") and "<tool_response>" in text


def test_native_tool_messages():
    msgs = [HumanMessage("hi"), AIMessage("", tool_calls=[{"name": "f", "args": {"x": 1}, "id": "c9"}]),
            ToolMessage("42", tool_call_id="c9")]
    out = to_template_messages(msgs, native_tools=True)
    assert out[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"x": 1}}
    assert out[2] == {"role": "tool", "content": "42", "tool_call_id": "c9"}


def test_empty_and_unrenderable_messages_are_clear_errors():
    with pytest.raises(PromptError, match="the message list is empty"):
        to_template_messages([], native_tools=False)

    class Weird(BaseMessage):
        type: str = "weird"

    with pytest.raises(PromptError, match="cannot render a Weird"):
        to_template_messages([Weird(content="x")], native_tools=False)
    img = HumanMessage(content=[{"type": "image_url", "image_url": {"url": "data:..."}}])
    with pytest.raises(PromptError, match="'image_url' content block"):
        to_template_messages([img], native_tools=False)


def test_parse_tool_calls_roundtrip_and_invalid():
    text = "Let me check.\n" + format_tool_call("get_weather", {"city": "Paris"}) + "\n<tool_call>{bad json}</tool_call>"
    rest, calls, invalid = parse_tool_calls(text)
    assert rest == "Let me check."
    assert [(c["name"], c["args"]) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0]["id"].startswith("call_") and len(invalid) == 1 and invalid[0]["args"] == "{bad json}"
    assert parse_tool_calls("plain answer") == ("plain answer", [], [])
