"""Entity-aware rewards: thoughts, matching options, the paper's example, advantages, TRL calling."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

from saffron_runtime.errors import ConfigError
from saffron_runtime.rewards import (
    MatchOptions,
    egrpo_rewards,
    extract_thoughts,
    grpo_advantages,
    make_egrpo_reward_func,
    match_rate,
    matched_entities,
)

GOLD = ["Leonardo", "Titanic"]


def test_design_example():
    thoughts = ["Leonardo starred in Titanic", "I think Leonardo was in it", "no idea at all"]
    # group max gamma is 1.0 (the first rollout thought of both), so gamma_hat = gamma
    assert egrpo_rewards(thoughts, GOLD, [True, False, False]) == [1.0, pytest.approx(0.3 * 0.5), 0.0]
    # without a full match in the group, gamma_hat normalises by the best wrong rollout
    assert egrpo_rewards(thoughts[1:], GOLD, [False, False]) == [pytest.approx(0.3), 0.0]
    assert egrpo_rewards(thoughts, GOLD, [False] * 3, errors=[True, False, False]) == [0.0, pytest.approx(0.15), 0.0]


def test_thoughts_from_think_blocks_react_and_messages():
    assert extract_thoughts("<think>Leonardo?</think>The answer is Kate") == "Leonardo?"
    react = "Thought: search Titanic cast\nAction: search\nAction Input: Titanic\nObservation: Leonardo DiCaprio\nThought: done\nFinal Answer: X"
    t = extract_thoughts(react)
    assert "Titanic cast" in t and "done" in t and "Leonardo" not in t  # observations never count
    msgs = [HumanMessage("who?"), AIMessage("<think>maybe Titanic</think>", tool_calls=[{"name": "s", "args": {}, "id": "1"}]),
            ToolMessage("Leonardo DiCaprio played Jack", tool_call_id="1"), AIMessage("It was Kate.")]
    t = extract_thoughts(msgs)
    assert "Titanic" in t and "It was Kate." in t and "Leonardo" not in t
    dicts = [{"role": "assistant", "content": "Leonardo"}, {"role": "tool", "content": "Titanic"}]
    assert matched_entities(extract_thoughts(dicts), GOLD) == {"Leonardo"}


def test_matching_default_is_exact_and_options_are_opt_in():
    assert match_rate("leonardo and titanic", GOLD) == 0.0
    assert match_rate("leonardo and titanic", GOLD, MatchOptions(casefold=True)) == 1.0
    assert match_rate("Ｌｅｏｎａｒｄｏ", GOLD, MatchOptions(unicode_normalize=True)) == 0.5
    assert match_rate("Leonardos", GOLD) == 0.5 and match_rate("Leonardos", GOLD, MatchOptions(word_boundary=True)) == 0.0
    assert match_rate("DiCaprio", GOLD, MatchOptions(variants={"Leonardo": ["DiCaprio", "Leo"]})) == 0.5
    assert match_rate("anything", []) == 0.0
    with pytest.raises(ConfigError, match="the gold entity list is empty"):
        egrpo_rewards(["a"], [], [False])


@given(st.lists(st.tuples(st.text(max_size=30), st.booleans(), st.booleans()), min_size=1, max_size=8),
       st.floats(0, 1))
def test_reward_properties(rows, alpha):
    thoughts = [r[0] for r in rows]
    correct = [r[1] for r in rows]
    errors = [r[2] for r in rows]
    rewards = egrpo_rewards(thoughts, ["ab", "c"], correct, alpha=alpha, errors=errors)
    for r, c, e in zip(rewards, correct, errors, strict=True):
        assert 0.0 <= r <= 1.0
        assert r == (0.0 if e else 1.0 if c else r) and (c or e or r <= alpha + 1e-12)
    perm = list(range(len(rows)))[::-1]
    again = egrpo_rewards([thoughts[i] for i in perm], ["ab", "c"], [correct[i] for i in perm], alpha=alpha,
                          errors=[errors[i] for i in perm])
    assert again == [rewards[i] for i in perm]


def test_advantages_overlength_and_zero_std():
    adv, in_loss = grpo_advantages([1.0, 0.0, 0.3, 0.0], overlength=[False, False, False, True])
    assert sum(adv) == pytest.approx(0.0) and in_loss == [True, True, True, False]
    assert adv[0] > adv[2] > adv[1]
    assert grpo_advantages([0.5, 0.5]) == ([0.0, 0.0], [True, True])


def test_invalid_inputs():
    with pytest.raises(ConfigError, match="correct has 1 flags but there are 2 rollouts"):
        egrpo_rewards(["a", "b"], GOLD, [True])
    with pytest.raises(ConfigError, match=r"alpha=1.5 must be in \[0, 1\]"):
        egrpo_rewards(["a"], GOLD, [True], alpha=1.5)


def test_trl_calling_convention():
    """Called exactly as TRL's GRPOTrainer does: keyword args, a flat batch, consecutive groups."""
    f = make_egrpo_reward_func(max_completion_chars=200)
    prompts = ["Q1"] * 3 + ["Q2"] * 2
    completions = [
        [{"role": "assistant", "content": "<think>Leonardo in Titanic</think>Kate Winslet"}],
        [{"role": "assistant", "content": "<think>Leonardo</think>Billy Zane"}],
        [{"role": "assistant", "content": "<think>hmm</think>nobody"}],
        [{"role": "assistant", "content": "<think>Paris</think>France"}],
        [{"role": "assistant", "content": "<think>" + "x" * 300 + "</think>France"}],
    ]
    rewards = f(prompts=prompts, completions=completions, completion_ids=[[1]] * 5,
                entities=[GOLD] * 3 + [["Paris"]] * 2, answer=["Kate Winslet"] * 3 + ["France"] * 2, trainer_state=None)
    assert rewards == [1.0, pytest.approx(0.15), 0.0, 1.0, 0.0]  # the last is overlength
    assert f.__name__ == "egrpo_reward"


@given(st.lists(st.floats(0, 1), min_size=1, max_size=10))
def test_gamma_hat_in_unit_interval(rates):
    from saffron_runtime.rewards import normalised_rates

    hat = normalised_rates(rates)
    assert all(0.0 <= h <= 1.0 for h in hat)
    assert max(hat) == (1.0 if max(rates) > 0 else 0.0)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=10), st.data())
def test_advantages_have_mean_zero(rewards, data):
    over = data.draw(st.lists(st.booleans(), min_size=len(rewards), max_size=len(rewards)))
    adv, in_loss = grpo_advantages(rewards, over)
    assert abs(sum(adv) / len(adv)) < 1e-6 and in_loss == [not o for o in over]


def test_checker_can_report_format_errors():
    f = make_egrpo_reward_func(checker=lambda ans, gold: (gold in ans, "<answer>" not in ans))
    comps = ["<think>Leonardo</think><answer>Kate</answer>", "<think>Leonardo</think>Kate",
             "<think>x</think><answer>no</answer>"]
    assert f(prompts=["q"] * 3, completions=comps, entities=[GOLD] * 3, answer=["Kate"] * 3) == [1.0, 0.0, 0.0]


def test_one_real_trl_grpo_step_with_our_reward(tmp_path):
    """TRL's own GRPOTrainer calls the reward function on a tiny random model (trl is a test extra)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from saffron_runtime.testing import build_tiny_models

    models = build_tiny_models("qwen2", seed=3)
    ds = Dataset.from_list([{"prompt": "who starred in Titanic?", "entities": GOLD, "answer": "Kate"}] * 4)
    inner = make_egrpo_reward_func()
    calls = []

    def egrpo_reward(prompts, completions, **kwargs):
        out = inner(prompts=prompts, completions=completions, **kwargs)
        calls.append((list(completions), kwargs["entities"], out))
        return out

    cfg = GRPOConfig(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, num_generations=2,
                     max_completion_length=8, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1)
    trainer = GRPOTrainer(model=models.policy, reward_funcs=[egrpo_reward], args=cfg, train_dataset=ds,
                          processing_class=models.tokenizer)
    trainer.train()
    assert trainer.state.global_step == 1 and calls
    completions, ents, out = calls[0]
    assert len(out) == len(completions) == len(ents) == 4
    for g in (slice(0, 2), slice(2, 4)):  # groups of num_generations, one prompt each
        thoughts = [extract_thoughts(c) for c in completions[g]]
        correct = ["kate" in c.split("</think>")[-1].casefold() for c in completions[g]]
        assert out[g] == egrpo_rewards(thoughts, GOLD, correct)
