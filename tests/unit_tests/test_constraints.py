"""Grammar constraints (llguidance): masks, forking per beam, tool-call grammar, generate() hook."""

from __future__ import annotations

import json

import pytest
import torch

from saffron_runtime.constraints import Grammar, GrammarLogitsProcessor
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


@pytest.mark.smollm2
def test_generate_under_json_schema_on_smollm2(smollm2):
    tok, model = smollm2.tokenizer, smollm2.model
    ids = tok.apply_chat_template([{"role": "user", "content": "Give me a JSON object with x = 5."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    proc = GrammarLogitsProcessor(Grammar.json_schema(tok, SCHEMA), ids["input_ids"].shape[1])
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=20, do_sample=False, logits_processor=[proc],
                             pad_token_id=tok.pad_token_id)
    text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert isinstance(json.loads(text)["x"], int)
