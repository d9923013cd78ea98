"""The policy's nucleus and the candidate filters, one small object each, on hand-made tensors."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saffron_runtime.constraints import Grammar
from saffron_runtime.errors import ConfigError
from saffron_runtime.search.beam import Beam
from saffron_runtime.search.filters import (
    EosBan,
    EosRewardSubstitution,
    EosStop,
    GrammarBan,
    NoRepeatNGram,
    Nucleus,
    StopStrings,
    Temperature,
    UnseenRewardSubstitution,
    WithinPrefixShrinkage,
)
from saffron_runtime.search.nucleus import nucleus


def _beam(ids: list[int] | None = None, score: float = 0.0, constraint=None) -> Beam:
    return Beam(pnode=None, ids=ids or [], score=score, constraint=constraint)  # type: ignore[arg-type]


def test_nucleus_keeps_a_token_while_the_mass_ranked_above_it_is_below_top_p():
    probs = torch.tensor([0.1, 0.4, 0.2, 0.3])
    logits = probs.log()
    ids, p = nucleus(logits, 0.65)
    assert ids.tolist() == [1, 3] and torch.allclose(p, torch.tensor([0.4, 0.3]))  # 0.4 < 0.65 <= 0.7
    assert nucleus(logits, 0.75)[0].tolist() == [1, 3, 2]  # mass above 2 is 0.7 < 0.75
    assert nucleus(logits, 0.7)[0].tolist() == [1, 3]  # 0.7 is not below 0.7
    assert nucleus(logits, 1.0)[0].tolist() == [1, 3, 2, 0]


def test_nucleus_keeps_at_least_the_most_likely_token():
    ids, p = nucleus(torch.tensor([0.0, 3.0, 1.0]), 1e-9)
    assert ids.tolist() == [1] and p.shape == (1,)


def test_nucleus_removes_banned_tokens_and_renormalises():
    logits = torch.tensor([0.2, 0.5, 0.3]).log()
    banned = torch.tensor([False, True, False])
    ids, p = nucleus(logits, 1.0, banned)
    assert ids.tolist() == [2, 0]
    assert torch.allclose(p, torch.tensor([0.6, 0.4]))  # the mass is re-spread over what is left
    assert nucleus(logits, 1e-9, torch.tensor([True, True, False]))[0].tolist() == [2]
    zero = torch.tensor([0.0, float("-inf"), 1.0])  # a zero-probability token is never a candidate
    assert 1 not in nucleus(zero, 1.0)[0].tolist()


def test_eos_ban_only_before_min_new_tokens_and_on_the_logits_device():
    ban = EosBan({2}, min_new_tokens=2)
    logits = torch.zeros(4)
    out = ban(_beam([5]), logits)
    assert out[2] == float("-inf") and torch.isfinite(out[[0, 1, 3]]).all() and out.device == logits.device
    assert ban(_beam([5, 6]), logits) is logits
    assert EosBan(set(), min_new_tokens=9)(_beam(), logits) is logits


def test_grammar_ban_removes_what_the_grammar_forbids(tiny):
    tok = tiny.tokenizer
    state = Grammar(tok, "regex", "cake").start()
    logits = torch.zeros(len(tok) + 3)  # a head wider than the tokenizer: the extra ids are banned
    out = GrammarBan()(_beam(constraint=state), logits)
    allowed = state.allowed()
    assert torch.isfinite(out[: allowed.shape[0]]).eq(allowed[: logits.shape[0]]).all()
    assert (out[len(tok) :] == float("-inf")).all() and torch.isfinite(out).sum() >= 1
    assert GrammarBan()(_beam(), logits) is logits


def test_temperature_scales_logits_and_rejects_zero():
    assert torch.equal(Temperature(2.0)(_beam(), torch.tensor([2.0, -4.0])), torch.tensor([1.0, -2.0]))
    with pytest.raises(ConfigError, match="temperature=0"):
        Temperature(0.0)


def test_nucleus_filter_composes_its_filters_in_order():
    children = Nucleus(1.0, [Temperature(0.5), EosBan({0}, min_new_tokens=1)])
    ids, p = children(_beam(), torch.tensor([5.0, 1.0, 0.0]))
    assert ids.tolist() == [1, 2]
    assert torch.allclose(p, torch.softmax(torch.tensor([2.0, 0.0]), -1))  # temperature applied


def test_eos_reward_substitution_gives_eos_its_parents_score():
    sub = EosRewardSubstitution({2})
    rewards = torch.tensor([0.1, -1024.0, 0.3])
    out = sub(_beam([7], score=0.25), torch.tensor([4, 2, 9]), rewards, torch.full((3,), 1 / 3))
    assert out.tolist() == pytest.approx([0.1, 0.25, 0.3]) and rewards[1] == -1024.0  # input untouched
    no_eos = rewards[[0, 2]]
    assert sub(_beam(), torch.tensor([4, 9]), no_eos, torch.ones(2)) is no_eos  # no copy


def test_unseen_reward_substitution_gives_only_never_supervised_children_their_parents_score():
    unseen = torch.tensor([False, True, False, True])  # tokens 1 and 3 were never supervised
    sub = UnseenRewardSubstitution(unseen)
    rewards = torch.tensor([0.5, -1024.0, -2.0, -1024.0, 0.7])  # token 9 lies past the mask: kept
    probs = torch.tensor([0.4, 0.3, 0.1, 0.1, 0.1])
    out = sub(_beam([0], score=1.5), torch.tensor([0, 1, 2, 3, 9]), rewards, probs)
    assert out.tolist() == pytest.approx([0.5, 1.5, -2.0, 1.5, 0.7]) and rewards[1] == -1024.0
    seen = torch.tensor([0.5, -2.0])
    assert sub(_beam(), torch.tensor([0, 2]), seen, torch.ones(2)) is seen


def test_unseen_siblings_cap_gives_unseen_children_the_smaller_of_parent_and_siblings_mean():
    unseen = torch.tensor([False, True, False, True])
    sub = UnseenRewardSubstitution(unseen, siblings_cap=True)
    rewards = torch.tensor([0.5, -1024.0, -2.0, -1024.0])
    probs = torch.tensor([0.3, 0.4, 0.1, 0.2])  # seen siblings: tokens 0 and 2, weights 0.3 and 0.1
    mean = (0.3 * 0.5 + 0.1 * -2.0) / 0.4  # -0.125, under the parent's 1.5: the cap binds
    out = sub(_beam([0], score=1.5), torch.tensor([0, 1, 2, 3]), rewards, probs)
    assert out.tolist() == pytest.approx([0.5, mean, -2.0, mean])
    high = torch.tensor([3.0, -1024.0, 2.5, -1024.0])  # siblings above the parent: the parent's score
    out = sub(_beam([0], score=1.5), torch.tensor([0, 1, 2, 3]), high, probs)
    assert out.tolist() == pytest.approx([3.0, 1.5, 2.5, 1.5])
    only_unseen = torch.tensor([-1024.0, -1024.0])  # no seen sibling to read: the parent's score
    out = sub(_beam([0], score=1.5), torch.tensor([1, 3]), only_unseen, torch.tensor([0.5, 0.5]))
    assert out.tolist() == pytest.approx([1.5, 1.5])


def test_stop_criteria(tiny):
    tok = tiny.tokenizer
    assert EosStop({2})([5, 2]) and not EosStop({2})([2, 5]) and not EosStop({2})([])
    ids = tok("café help", add_special_tokens=False)["input_ids"]
    stop = StopStrings(tok, ["help"])
    assert stop(ids) and not stop(ids[:1]) and not StopStrings(tok, [])(ids)
    assert stop.truncate("café help me") == "café "


def _repeats(ids: list[int], n: int) -> bool:
    """Whether ``ids`` holds some n-gram twice (the oracle, written the slow way)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


@settings(max_examples=200, deadline=None)
@given(ids=st.lists(st.integers(0, 5), max_size=14), n=st.integers(1, 4))
def test_no_repeat_ngram_bans_exactly_the_tokens_that_would_repeat_an_ngram(ids, n):
    ban = NoRepeatNGram(n)
    prefix: list[int] = []  # the longest start of ids without a repeated n-gram (a response the ban made)
    for i in ids:
        if _repeats([*prefix, i], n):
            break
        prefix.append(i)
    banned = set(ban.banned(prefix))
    for t in range(6):
        assert (t in banned) == _repeats([*prefix, t], n), (prefix, n, t)


def test_no_repeat_ngram_masks_only_the_banned_tokens_and_rejects_zero():
    logits = torch.zeros(6)
    out = NoRepeatNGram(2)(_beam([3, 4, 1, 3]), logits)  # "3 4" is in the response: 4 may not follow 3
    assert out[4] == float("-inf") and torch.isfinite(out[[0, 1, 2, 3, 5]]).all()
    assert NoRepeatNGram(3)(_beam([3, 4]), logits) is logits  # too short to repeat a 3-gram
    with pytest.raises(ConfigError, match="no_repeat_ngram_size=0"):
        NoRepeatNGram(0)


def test_within_prefix_shrinkage_pulls_children_to_their_seen_siblings_mean():
    unseen = torch.tensor([False, True, False, False])
    rewards = torch.tensor([3.0, -1024.0, 0.0, 1.0, 5.0])  # token 9 lies past the mask: seen
    probs = torch.tensor([0.25, 0.25, 0.25, 0.125, 0.125])
    tokens = torch.tensor([0, 1, 2, 3, 9])
    mean = (0.25 * 3.0 + 0.25 * 0.0 + 0.125 * 1.0 + 0.125 * 5.0) / 0.75  # 2.0, the unseen child left out
    out = WithinPrefixShrinkage(unseen, 0.5)(_beam([0], score=-7.0), tokens, rewards, probs)
    assert out.tolist() == pytest.approx([2.5, mean, 1.0, 1.5, 3.5])
    flat = WithinPrefixShrinkage(unseen, 0.0)(_beam([0], score=-7.0), tokens, rewards, probs)
    assert flat.tolist() == pytest.approx([mean] * 5)
    kept = WithinPrefixShrinkage(None, 1.0)(_beam(), tokens[[0, 2]], rewards[[0, 2]], probs[[0, 2]])
    assert kept.tolist() == pytest.approx([3.0, 0.0])
    only_unseen = WithinPrefixShrinkage(unseen, 0.5)(_beam([0], score=-7.0), tokens[[1]], rewards[[1]], probs[[1]])
    assert only_unseen.tolist() == [-7.0]  # nothing seen to read: the parent's score
