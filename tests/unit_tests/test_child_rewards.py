"""Judged nucleus children: batched scores equal the judge run on each child's own prefix."""

from __future__ import annotations

import random

import pytest
import torch

from saffron_runtime.errors import DataError
from saffron_runtime.jsonl import read_jsonl, write_jsonl
from saffron_runtime.training.child_rewards import (
    add_child_rewards,
    choose_positions,
    merge_child_records,
    nucleus_children,
    score_children_at,
)
from saffron_runtime.training.judges import CausalHeadJudge, chat_prefix_builder
from saffron_runtime.training.reward_data import ChildRewards, TokenRewardRecord


@pytest.fixture(scope="module")
def policy(tiny):
    from saffron_runtime.models.loading import LoadedModel

    return LoadedModel(tiny.policy, tiny.tokenizer, "tiny")


@pytest.fixture(scope="module")
def judge(tiny):
    torch.manual_seed(3)
    head = torch.nn.Linear(tiny.reward_backbone.config.hidden_size, 2)
    return CausalHeadJudge(tiny.reward_backbone, head, chat_prefix_builder(tiny.tokenizer), ema=0.3)


@pytest.mark.parametrize("ema", [1.0, 0.3])
def test_batched_child_scores_equal_one_forward_per_child(tiny, judge, ema):
    judge.ema = ema
    resp = tiny.tokenizer("the cat sat on the mat and then it ran", add_special_tokens=False)["input_ids"]
    positions = [0, 3, len(resp) - 1]
    kids = [[resp[t], 5, 17, 40] for t in positions]
    got = score_children_at(judge, "hello there", resp, positions, kids)
    for t, ks, row in zip(positions, kids, got, strict=True):
        for c, score in zip(ks, row, strict=True):
            want = judge.score_prefixes("hello there", [*resp[:t], c])[-1]
            assert score == pytest.approx(want, abs=1e-4)


def test_nucleus_children_contain_the_observed_token_and_follow_the_policy(tiny, policy):
    from saffron_runtime.models.chat import chat_prompt_ids
    from saffron_runtime.search.nucleus import nucleus

    resp = tiny.tokenizer("a dog barks loudly", add_special_tokens=False)["input_ids"]
    kids = nucleus_children(policy, "hi", [], resp, [0, 2], top_p=0.5, max_children=3)
    ids = chat_prompt_ids(tiny.tokenizer, "hi") + resp[:2]
    with torch.no_grad():
        logits = tiny.policy(input_ids=torch.tensor([ids])).logits[0, -1]
    expect = nucleus(logits, 0.5)[0][:3].tolist()
    assert kids[1][: len(expect)] == expect
    assert resp[2] in kids[1] and resp[0] in kids[0]


def test_add_child_rewards_resumes_and_keeps_the_record(tiny, policy, judge, tmp_path):
    judge.ema = 1.0
    resp = tiny.tokenizer("one two three four five six", add_special_tokens=False)["input_ids"]
    recs = [
        TokenRewardRecord(id=f"r{i}", prompt=f"prompt {i}", response_ids=resp, rewards=[0.0] * len(resp))
        for i in range(3)
    ]
    data = tmp_path / "rewards.jsonl"
    data.write_text("".join(r.model_dump_json() + "\n" for r in recs))
    out = tmp_path / "children.jsonl"
    add_child_rewards(policy, judge, data, out, positions=2, max_children=4, progress=False)
    lines = out.read_text().splitlines()
    first = TokenRewardRecord.model_validate_json(lines[0])
    assert first.response_ids == resp and len(first.children) == 2
    out.write_text(lines[0] + "\n")  # as if interrupted after one record
    add_child_rewards(policy, judge, data, out, positions=2, max_children=4, progress=False)
    again = out.read_text().splitlines()
    assert len(again) == 3 and again == lines  # seeded per record: the resumed run matches


def test_choose_positions_is_all_for_short_responses():
    assert choose_positions(3, 5, random.Random(0)) == [0, 1, 2]
    got = choose_positions(50, 5, random.Random(0))
    assert len(set(got)) == 5 and got == sorted(got)


def test_merge_child_records_unions_positions_and_refuses_another_rollout(tmp_path):
    def rec(rid: str, resp: list[int], ts: list[int], r: float) -> TokenRewardRecord:
        kids = [ChildRewards(t=t, ids=[7, 8], rewards=[r, -r]) for t in ts]
        return TokenRewardRecord(id=rid, prompt="p", response_ids=resp, rewards=[0.0] * len(resp), children=kids)

    a, b = tmp_path / "s0.jsonl", tmp_path / "s1.jsonl"
    write_jsonl(a, [rec("x", [1, 2, 3, 4], [0, 2], 1.0), rec("y", [5, 6], [1], 1.0)])
    write_jsonl(b, [rec("x", [1, 2, 3, 4], [2, 3], 2.0), rec("z", [9], [0], 1.0)])
    out = tmp_path / "merged.jsonl"
    assert merge_child_records([a, b], out) == 3
    got = {r.id: r for r in read_jsonl(out, TokenRewardRecord)}
    assert [c.t for c in got["x"].children] == [0, 2, 3]
    assert got["x"].children[1].rewards == [1.0, -1.0]  # the first file keeps a position both judged
    assert [c.t for c in got["y"].children] == [1] and "z" in got
    write_jsonl(b, [rec("x", [1, 2, 9, 4], [3], 2.0)])
    with pytest.raises(DataError, match="same rewards file"):
        merge_child_records([a, b], out)
