"""Wrap PEFT calls that read a deprecated transformers property, so users see only our warnings."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_peft() -> Iterator[None]:
    """Hide the one FutureWarning PEFT triggers on transformers >= 5.24 (``is_gradient_checkpointing``).

    PEFT reads the deprecated property when it wraps a model; nothing the caller does changes it, so
    the warning only adds noise to every load and training run. Other warnings pass through.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning
        )
        yield
