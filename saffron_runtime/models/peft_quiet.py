"""Wrap PEFT calls that read a deprecated transformers property, so users see only our warnings."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Hide two PEFT warnings that say nothing the caller can act on; other warnings pass through.

    * the FutureWarning PEFT triggers on transformers >= 5.24 (``is_gradient_checkpointing``): PEFT reads
      the deprecated property whenever it wraps a model;
    * the weight-tying UserWarning when an MRM adapts its tied output layer (``--head-lora``): only the
      output side is adapted on purpose, the input embedding stays the base's, and the adapter is never
      merged, which is the case the warning is about.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        warnings.filterwarnings(
            "ignore", message=r"Model has `tie_word_embeddings=True` and a tied layer", category=UserWarning
        )
        yield
