"""Analytic FLOPs: the formula's parts on a tiny model, and additivity over incremental decoding."""

import pytest

from saffron_runtime.models.flops import FlopsModel


def test_flops_parts(tiny):
    f = FlopsModel.of(tiny.policy)
    cfg = tiny.policy.config
    assert f.head_params == cfg.vocab_size * cfg.hidden_size and f.n_layers == 2 and f.d_attn == 64
    total = sum(p.numel() for p in tiny.policy.parameters())
    assert f.body_params == total - 2 * cfg.vocab_size * cfg.hidden_size  # untied embeddings excluded
    one = f.forward(1, 10)
    assert one == pytest.approx(2 * f.body_params + 2 * 2 * 64 * 10 + 2 * f.head_params)


def test_prefill_equals_sum_of_single_steps_except_head(tiny):
    f = FlopsModel.of(tiny.policy)
    prefill = f.forward(8, 8, logits_positions=8)
    steps = sum(f.forward(1, t) for t in range(1, 9))
    assert prefill == pytest.approx(steps)
    assert f.forward(8, 8, logits_positions=1) == pytest.approx(steps - 7 * 2 * f.head_params)
    assert f.forward(0, 5) == 0.0
