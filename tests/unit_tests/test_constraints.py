"""Grammar constraints (llguidance): masks, forking per beam, tool-call grammar, generate() hook."""

from __future__ import annotations

import pytest

from saffron_runtime.constraints import Grammar
from saffron_runtime.errors import ConfigError

SCHEMA = {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"], "additionalProperties": False}
TOOL = {"type": "function", "function": {"name": "f", "parameters": SCHEMA}}


def test_json_schema_mask_accepts_valid_and_forks(tiny):
    g = Grammar.json_schema(tiny.tokenizer, SCHEMA)
    ids = tiny.tokenizer('{"x": 12}', add_special_tokens=False)["input_ids"]
    st = g.start()
    for i, t in enumerate(ids):
        assert st.allowed()[t]
        if i == 2:
            branch = st.fork()
        st.advance(t)
    assert st.accepting and st.allowed()[tiny.tokenizer.eos_token_id]
    assert not branch.accepting  # the fork did not see the later tokens
    bad = tiny.tokenizer("k", add_special_tokens=False)["input_ids"][0]
    assert not g.start().allowed()[bad]
    with pytest.raises(ConfigError, match="violates the output grammar"):
        g.start().advance(bad)


def test_tool_call_grammar(tiny):
    g = Grammar.tool_calls(tiny.tokenizer, [TOOL])
    text = '<tool_call>{"name": "f", "arguments": {"x": 3}}</tool_call>'
    st = g.start()
    for t in tiny.tokenizer(text, add_special_tokens=False)["input_ids"]:
        st.advance(t)
    assert st.done
    with pytest.raises(ConfigError, match="at least one tool"):
        Grammar.tool_calls(tiny.tokenizer, [])


def test_invalid_grammar_is_a_config_error(tiny):
    with pytest.raises(ConfigError, match="invalid lark grammar"):
        Grammar(tiny.tokenizer, "lark", "start: ((")
    with pytest.raises(ConfigError, match="use json_schema, regex or lark"):
        Grammar(tiny.tokenizer, "ebnf", "x")
