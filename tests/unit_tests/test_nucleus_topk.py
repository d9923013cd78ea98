"""The nucleus ranks only the top tokens when they hold the mass, and then gives exactly what
sorting the whole vocabulary gives (ids, probabilities and order), peaked or flat, with bans."""

from __future__ import annotations

import pytest
import torch

from saffron_runtime.search import nucleus as nucleus_module
from saffron_runtime.search.nucleus import nucleus


def _full_sort(logits: torch.Tensor, top_p: float, banned: torch.Tensor | None = None):
    old = nucleus_module._TOP_K
    nucleus_module._TOP_K = 10**9  # never the shortcut: the whole vocabulary sorted, as before
    try:
        return nucleus(logits, top_p, banned)
    finally:
        nucleus_module._TOP_K = old


@pytest.mark.parametrize("scale", [0.5, 2.0, 8.0, 30.0])  # flat (falls back to the sort) to peaked
@pytest.mark.parametrize("top_p", [0.3, 0.8, 0.95, 1.0])
def test_the_shortcut_equals_the_full_sort(scale, top_p):
    gen = torch.Generator().manual_seed(int(scale * 10 + top_p * 100))
    logits = torch.randn(49152, generator=gen) * scale
    banned = torch.zeros(49152, dtype=torch.bool)
    banned[logits.argmax()] = True  # a banned favourite (EOS before min_new_tokens)
    for ban in (None, banned):
        ids, probs = nucleus(logits, top_p, ban)
        ref_ids, ref_probs = _full_sort(logits, top_p, ban)
        assert torch.equal(ids, ref_ids) and torch.equal(probs, ref_probs)


def test_a_peaked_distribution_never_sorts_the_vocabulary(monkeypatch):
    logits = torch.full((49152,), -10.0)
    logits[:5] = torch.tensor([9.0, 8.0, 7.0, 6.0, 5.0])

    def no_sort(*a, **kw):
        raise AssertionError("sorted the whole vocabulary")

    monkeypatch.setattr(torch.Tensor, "sort", no_sort)
    ids, _ = nucleus(logits, 0.8)
    assert ids.tolist() == [0, 1]
