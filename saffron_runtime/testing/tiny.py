"""Tiny random Llama / Qwen2 models with a real byte-level BPE tokenizer trained on generated text.

Tests use these where the model's judgement does not matter but its mechanics do (KV caches,
search, streaming). They build in about a second and need no network.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""A ChatML template like SmolLM2's (no tools branch)."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "su",
    "ta",
    "ri",
    "po",
    "ve",
    "da",
    "the",
    "and",
    "how",
    "make",
    "safe",
    "help",
    "you",
    "can",
    "not",
    "is",
    "bomb",
    "cake",
    "water",
    "plan",
    "sure",
    "sorry",
]
_EXTRAS = ["é", "ü", "中文", "日本", "🙂", "—", "naïve", "café", "!", "?", ",", "."]


def _corpus(n_lines: int, seed: int) -> list[str]:
    """Generated text with ASCII words, punctuation and multi-byte characters."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        words = []
        for _ in range(rng.randint(3, 14)):
            w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))
            if rng.random() < 0.15:
                w += rng.choice(_EXTRAS)
            words.append(w)
        lines.append(" ".join(words))
    return lines


@lru_cache(maxsize=4)
def _trained_tokenizer_json(vocab_size: int, seed: int) -> str:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(2000, seed), trainer=trainer)
    return tok.to_str()


def tiny_tokenizer(vocab_size: int = 384, seed: int = 0) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (ChatML specials, chat template) trained on generated text."""
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(_trained_tokenizer_json(vocab_size, seed))
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token=None,
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def tiny_causal_lm(
    vocab_size: int,
    arch: Literal["llama", "qwen2"] = "llama",
    *,
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    eos_token_id: int | None = None,
    pad_token_id: int | None = None,
    bos_token_id: int | None = None,
) -> PreTrainedModel:
    """A randomly initialised causal LM (eval mode, fp32) with the given vocabulary size."""
    torch.manual_seed(seed)
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        max_position_embeddings=1024,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        model: PreTrainedModel = LlamaForCausalLM(LlamaConfig(**common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    else:
        raise ValueError(f"arch={arch!r}: use 'llama' or 'qwen2'")
    model.config._attn_implementation = "eager"
    return model.eval()


@dataclass
class TinyModels:
    """A tokenizer plus a policy and a second model (for an MRM or monitor backbone) sharing it."""

    tokenizer: PreTrainedTokenizerFast
    policy: PreTrainedModel
    reward_backbone: PreTrainedModel


def build_tiny_models(arch: Literal["llama", "qwen2"] = "llama", seed: int = 0) -> TinyModels:
    """Tokenizer + two tiny random models over its vocabulary, ready for search or monitor tests."""
    tok = tiny_tokenizer(seed=seed)
    ids = dict(
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id
    )
    policy = tiny_causal_lm(len(tok), arch, seed=seed, **ids)
    backbone = tiny_causal_lm(len(tok), arch, seed=seed + 1, **ids)
    return TinyModels(tokenizer=tok, policy=policy, reward_backbone=backbone)
