"""The KV-cache keyword of a Hugging Face forward, decided in one place.

transformers 5.24 renamed the ``past_key_values`` argument and output field to ``cache`` (the old name
is deprecated and goes in 5.40); the package supports ``transformers>=5.0,<6``, so it asks each model
class which name its ``forward`` takes instead of hard-coding either.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from typing import Any


def _base(model: Any) -> Any:
    """The model under a PEFT wrapper (whose ``forward`` only forwards ``**kwargs``)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@lru_cache(maxsize=64)
def _kv_name(cls: type) -> str:
    params = inspect.signature(cls.forward).parameters  # follows functools.wraps decorators
    return "cache" if "cache" in params else "past_key_values"


def kv_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` with the name ``model.forward`` takes for its KV cache."""
    return {_kv_name(type(_base(model))): cache}


def returned_kv(out: Any) -> Any:
    """The KV cache a forward returned (``out.cache`` or ``out.past_key_values``), or None.

    An output class with a ``cache`` field is read by that name even when it is None: on transformers
    >= 5.24 ``out.past_key_values`` is a deprecated alias that logs a warning on every run.
    """
    if "cache" in getattr(out, "__dataclass_fields__", {}) or "cache" in out:
        return out.get("cache")
    return getattr(out, "past_key_values", None)
