"""The KV-cache keyword is the one the model's forward takes, and a cache passed that way is used."""

from __future__ import annotations

import inspect

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
