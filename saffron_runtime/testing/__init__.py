"""Helpers for tests, examples and benchmarks: tiny random models that build in about a second."""

from saffron_runtime.testing.tiny import (
    CHATML_TEMPLATE,
    TinyModels,
    build_tiny_models,
    tiny_causal_lm,
    tiny_tokenizer,
)

__all__ = ["CHATML_TEMPLATE", "TinyModels", "build_tiny_models", "tiny_causal_lm", "tiny_tokenizer"]
