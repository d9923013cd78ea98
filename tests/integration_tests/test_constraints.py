"""Grammar constraints on the real SmolLM2: the generate() hook yields valid JSON under a schema (masks,
forking and the tool-call grammar run on tiny models in tests/unit_tests/test_constraints.py)."""

from __future__ import annotations

import json

import pytest
import torch

from saffron_runtime.constraints import Grammar, GrammarLogitsProcessor

from ..unit_tests.test_constraints import SCHEMA


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
