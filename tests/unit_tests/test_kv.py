"""The KV-cache keyword is the one the model's forward takes, and a cache passed that way is used."""

from __future__ import annotations

import inspect
import logging

import torch
from transformers import DynamicCache

from saffron_runtime.models.kv import kv_kwargs, returned_kv


def test_kv_keyword_matches_forward_and_the_cache_is_used(tiny):
    model = tiny.policy
    (name,) = kv_kwargs(model, None)
    assert name in inspect.signature(type(model).forward).parameters
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        full = model(input_ids=ids).logits[:, -1]
        cache = DynamicCache()
        out = model(input_ids=ids[:, :3], use_cache=True, **kv_kwargs(model, cache))
        assert returned_kv(out) is cache and cache.get_seq_length() == 3
        step = model(input_ids=ids[:, 3:], use_cache=True, **kv_kwargs(model, returned_kv(out))).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-4, atol=1e-4)


def test_no_cache_is_read_without_the_deprecated_alias(tiny):
    """A forward without a cache gives None, and reading it logs no deprecation warning (5.24+)."""
    records: list[logging.LogRecord] = []

    class _Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Keep()
    root = logging.getLogger("transformers")
    root.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # transformers logs each message once per process
    try:
        with torch.no_grad():
            out = tiny.policy.model(input_ids=torch.tensor([[5, 6, 7]]), use_cache=False)
        assert returned_kv(out) is None
    finally:
        root.removeHandler(handler)
    assert not [r for r in records if "deprecated" in r.getMessage()]
