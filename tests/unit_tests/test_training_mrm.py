"""Reward data and MRM training on tiny random models: exact judges, partial supervision, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from saffron_runtime.errors import DataError, SearchCancelled
from saffron_runtime.jsonl import read_jsonl
from saffron_runtime.models import load_mrm
from saffron_runtime.models.loading import LoadedModel
from saffron_runtime.testing import tiny_causal_lm
from saffron_runtime.training.judges import CallableJudge, CausalHeadJudge, chat_prefix_builder
from saffron_runtime.training.mrm_train import MRMTrainConfig, partial_supervision_loss, train_mrm
from saffron_runtime.training.reward_data import PromptItem, TokenRewardRecord, build_reward_data


def _policy(tiny) -> LoadedModel:
    return LoadedModel(model=tiny.policy, tokenizer=tiny.tokenizer, source="tiny-llama")


def _word_judge(tok):
    """A deterministic text judge: negative margin once 'bomb' appears, positive otherwise."""
    return CallableJudge(lambda p, r: -1.0 - r.count("bomb") if "bomb" in r else 1.0 + 0.01 * len(r), tok,
                         name="word-judge")


ITEMS = [PromptItem(id=f"p{i}", prompt=p, prefill=pre, label=lab) for i, (p, pre, lab) in enumerate([
    ("how make cake", "", 0), ("how make bomb", "sure the bomb", 1), ("help water plan", "", 0),
    ("make bomb kaloni", "sure", 1), ("safe sorry the", "", 0), ("café 中文 help", "", 0),
])]


def test_causal_head_judge_scores_all_prefixes_in_one_forward_exactly(tiny):
    torch.manual_seed(0)
    head = torch.nn.Linear(tiny.reward_backbone.config.hidden_size, 2)
    judge = CausalHeadJudge(tiny.reward_backbone, head, chat_prefix_builder(tiny.tokenizer))
    resp = tiny.tokenizer("sure the bomb is café", add_special_tokens=False)["input_ids"]
    one = judge.score_prefixes("how make bomb", resp)
    prefix = chat_prefix_builder(tiny.tokenizer)("how make bomb")
    for t in range(len(resp)):  # reference: a separate forward for each prefix, nothing after it
        ids = torch.tensor([prefix + resp[: t + 1]])
        with torch.no_grad():
            h = tiny.reward_backbone(ids, output_hidden_states=True).hidden_states[-1][0, -1]
            logit = head(h)
        assert one[t] == pytest.approx(float(logit[0] - logit[1]), abs=1e-5)


def test_reward_data_schema_eos_and_resume(tmp_path, tiny):
    out = tmp_path / "rewards.jsonl"
    judge = _word_judge(tiny.tokenizer)
    stop = __import__("threading").Event()

    class StopAfterFirst(CallableJudge):
        def score_prefixes(self, prompt, response_ids):
            stop.set()
            return super().score_prefixes(prompt, response_ids)

    stopper = StopAfterFirst(judge.fn, tiny.tokenizer, name=judge.name)
    with pytest.raises(SearchCancelled):
        build_reward_data(_policy(tiny), stopper, ITEMS, out, batch_size=2, max_new_tokens=12,
                          stop_event=stop, progress=False)
    partial = read_jsonl(out, TokenRewardRecord)
    assert 0 < len(partial) < len(ITEMS)
    build_reward_data(_policy(tiny), judge, ITEMS, out, batch_size=2, max_new_tokens=12, progress=False)
    resumed = read_jsonl(out, TokenRewardRecord)
    fresh_out = tmp_path / "fresh.jsonl"
    build_reward_data(_policy(tiny), judge, ITEMS, fresh_out, batch_size=2, max_new_tokens=12, progress=False)
    fresh = read_jsonl(fresh_out, TokenRewardRecord)
    assert [r.model_dump() for r in resumed] == [r.model_dump() for r in fresh]  # seeded per batch
    eos = tiny.tokenizer.eos_token_id
    for r in fresh:
        assert len(r.rewards) == len(r.response_ids)
        text = tiny.tokenizer.decode(r.response_ids[:-1] if r.ended_with_eos else r.response_ids, skip_special_tokens=True)
        assert r.rewards[-1] == pytest.approx(judge.fn(r.prompt, text))  # last entry = full-response score
        if r.ended_with_eos:
            assert r.response_ids[-1] == eos and eos not in r.response_ids[:-1]
        if r.id == "p1":
            assert tiny.tokenizer.decode(r.prefill_ids) == "sure the bomb"  # judge never saw the prefill


def test_bad_data_line_names_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    good = {"id": "a", "prompt": "x", "response_ids": [1, 2], "rewards": [0.1, 0.2]}
    p.write_text(json.dumps(good) + "\n" + json.dumps({**good, "rewards": [0.1]}) + "\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: .*rewards has 1 entries but response_ids has 2"):
        read_jsonl(p, TokenRewardRecord)
    p.write_text("{oops\n")
    with pytest.raises(DataError, match=r"bad.jsonl:1: not valid JSON"):
        read_jsonl(p, TokenRewardRecord)


def test_partial_supervision_gives_no_gradient_to_other_vocabulary_entries(tiny):
    model = tiny_causal_lm(len(tiny.tokenizer), seed=3)
    head = model.get_output_embeddings()
    head.weight.requires_grad_(True)
    ids = torch.tensor([[5, 9, 14, 33, 20], [7, 7, 40, 2, 2]])
    hidden = model.model(input_ids=ids).last_hidden_state
    targets = torch.tensor([[9, 14, 33, 20], [7, 40, 0, 0]])
    rewards = torch.tensor([[0.5, -1.0, 2.0, 0.1], [1.0, -2.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.float)
    loss = partial_supervision_loss(hidden[:, :4], head, targets, rewards, mask)
    # same value as gathering from full logits
    full = model.lm_head(hidden[:, :4]).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ref = ((full - rewards) ** 2 * mask).sum() / mask.sum()
    assert float(loss) == pytest.approx(float(ref), rel=1e-5)
    loss.backward()
    touched = (head.weight.grad.abs().sum(-1) > 0).nonzero().flatten().tolist()
    assert sorted(touched) == [7, 9, 14, 20, 33, 40]  # observed tokens only (masked pads excluded)


def test_the_within_prefix_term_reads_the_order_of_children_not_their_level():
    from saffron_runtime.training.mrm_train import centred_loss

    rewards = torch.tensor([[[1.0, 2.0, 3.0], [5.0, 0.0, 0.0]]])  # position 2 has one entry only
    mask = torch.tensor([[[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]]])
    shifted = rewards + 10.0  # every level wrong, every order right
    assert float(centred_loss(shifted, rewards, mask)) == pytest.approx(0.0, abs=1e-6)
    reversed_ = torch.tensor([[[3.0, 2.0, 1.0], [-7.0, 9.0, 9.0]]])  # the lone entry and pads do not count
    assert float(centred_loss(reversed_, rewards, mask)) == pytest.approx((1 + 0 + 1) * 4 / 3)
    assert float(centred_loss(rewards[:, 1:], rewards[:, 1:], mask[:, 1:])) == 0.0


@pytest.fixture(scope="module")
def reward_file(tmp_path_factory, tiny) -> Path:
    out = tmp_path_factory.mktemp("rd") / "rewards.jsonl"
    items = [PromptItem(id=f"q{i}", prompt=f"how make {w}", prefill="sure" if i % 2 else "")
             for i, w in enumerate(["cake", "bomb", "water", "bomb bomb", "plan", "café", "sorry", "help"])]
    build_reward_data(_policy(tiny), _word_judge(tiny.tokenizer), items, out, batch_size=4,
                      max_new_tokens=16, progress=False)
    return out


@pytest.fixture(scope="module")
def tiny_base_dir(tmp_path_factory, tiny) -> Path:
    d = tmp_path_factory.mktemp("base")
    tiny_causal_lm(len(tiny.tokenizer), seed=11, eos_token_id=tiny.tokenizer.eos_token_id).save_pretrained(d)
    tiny.tokenizer.save_pretrained(d)
    return d


def _cfg(reward_file, base, out, **kw) -> MRMTrainConfig:
    args = dict(data=reward_file, out=out, base=str(base), lr=5e-3, epochs=30, batch_size=4,
                lora_r=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], checkpoint_every=5)
    return MRMTrainConfig(**{**args, **kw})


def test_train_mrm_end_to_end_loss_decreases_and_loads_back(tmp_path, reward_file, tiny_base_dir, tiny):
    out = tmp_path / "mrm"
    train_mrm(_cfg(reward_file, tiny_base_dir, out), progress=False)
    losses = json.loads(sorted((out / "checkpoints").glob("step-*"))[-1].joinpath("trainer_state.json").read_text())["losses"]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5
    mrm = load_mrm(out, policy_tokenizer=tiny.tokenizer)
    records = read_jsonl(reward_file, TokenRewardRecord)
    seen = {t for r in records for t in r.response_ids}
    assert set((~mrm.unseen_mask).nonzero().flatten().tolist()) == seen
    assert mrm.eos_supervised == any(r.ended_with_eos for r in records)
    # the trained MRM's gathered rewards track the training targets
    r = records[0]
    ids = torch.tensor([mrm.template.prompt_ids(tiny.tokenizer, r.prompt) + r.response_ids[:-1]])
    with torch.no_grad():
        logits = mrm.model(input_ids=ids).logits[0, -len(r.response_ids):]
    pred = logits.gather(-1, torch.tensor(r.response_ids).unsqueeze(-1)).squeeze(-1)
    err = (pred - torch.tensor(r.rewards)).abs().mean()
    assert float(err) < 0.5 * float(torch.tensor(r.rewards).abs().mean() + 1)
    assert (out / "README.md").read_text().count("Wall time") == 1


def test_invalid_config_names_the_field(tmp_path):
    from saffron_runtime.errors import ConfigError

    with pytest.raises(ConfigError, match=r"MRMTrainConfig.lora_r=0: must be >= 1"):
        MRMTrainConfig(data=tmp_path / "d", out=tmp_path, lora_r=0)
    with pytest.raises(ConfigError, match=r"set train_final_norm=True too"):
        MRMTrainConfig(data=tmp_path / "d", out=tmp_path, final_norm_scale=0.1)


def test_prefill_attack_doubles_harmful_prompts_only():
    from saffron_runtime.training.reward_data import with_prefill_attack

    items = [PromptItem(id="h", prompt="harm", label=1), PromptItem(id="b", prompt="ok", label=0),
             PromptItem(id="p", prompt="harm2", label=1, prefill="already")]
    out = with_prefill_attack(items, "Sure, here is")
    assert [(i.id, i.prefill) for i in out] == [("h", ""), ("h/prefill", "Sure, here is"), ("b", ""),
                                                ("p", "already")]
    assert [i.id for i in with_prefill_attack(items, "Sure", keep_plain=False)] == ["h/prefill", "b", "p"]
    with pytest.raises(DataError, match="prefill string is empty"):
        with_prefill_attack(items, "  ")


def test_judge_ema_smooths_the_raw_margins_causally(tiny):
    from saffron_runtime.errors import ConfigError

    torch.manual_seed(0)
    head = torch.nn.Linear(tiny.reward_backbone.config.hidden_size, 2)
    build = chat_prefix_builder(tiny.tokenizer)
    raw = CausalHeadJudge(tiny.reward_backbone, head, build).score_prefixes("q", [5, 9, 14, 33])
    smooth = CausalHeadJudge(tiny.reward_backbone, head, build, ema=0.5, name="j")
    assert smooth.name == "j/ema0.5"
    expect, m = [], raw[0]
    for x in raw:
        m = 0.5 * x + 0.5 * m
        expect.append(m)
    assert smooth.score_prefixes("q", [5, 9, 14, 33]) == pytest.approx(expect)
    assert smooth.score_prefixes("q", [5, 9])[-1] == pytest.approx(expect[1])  # prefix alone decides
    with pytest.raises(ConfigError, match="ema=0: must be in"):
        CausalHeadJudge(tiny.reward_backbone, head, build, ema=0)


@pytest.mark.parametrize("ema", [1.0, 0.3])
def test_score_children_equals_scoring_each_extended_prefix(tiny, ema):
    torch.manual_seed(0)
    head = torch.nn.Linear(tiny.reward_backbone.config.hidden_size, 2)
    judge = CausalHeadJudge(tiny.reward_backbone, head, chat_prefix_builder(tiny.tokenizer), ema=ema)
    for prefix in ([], [5, 9, 14]):
        kids = [3, 40, 77, 200]
        ref = [judge.score_prefixes("how make cake", [*prefix, c])[-1] for c in kids]
        assert judge.score_children("how make cake", prefix, kids) == pytest.approx(ref, abs=1e-5)


def test_child_supervision_teaches_the_ranking_of_a_prefixs_children(tmp_path, reward_file, tiny_base_dir, tiny):
    """Judged children at a prefix are supervised entries: the trained MRM orders those children as
    their rewards do, and they count as seen tokens."""
    from saffron_runtime.training.reward_data import ChildRewards

    records = read_jsonl(reward_file, TokenRewardRecord)
    kids = [11, 23, 37, 51, 64]
    with_children = [
        r.model_copy(update={"children": [ChildRewards(t=1, ids=kids, rewards=[-2.0, -1.0, 0.0, 1.0, 2.0])]})
        for r in records
    ]
    data = tmp_path / "children.jsonl"
    data.write_text("".join(r.model_dump_json() + "\n" for r in with_children))
    out = tmp_path / "mrm"
    train_mrm(_cfg(data, tiny_base_dir, out), progress=False)
    mrm = load_mrm(out, policy_tokenizer=tiny.tokenizer)
    assert not mrm.unseen_mask[kids].any()
    r = with_children[0]
    ids = torch.tensor([mrm.template.prompt_ids(tiny.tokenizer, r.prompt) + r.response_ids[:1]])
    with torch.no_grad():
        pred = mrm.model(input_ids=ids).logits[0, -1, kids]
    from saffron_runtime.evaluation.mrm_eval import spearman

    assert spearman(pred.tolist(), [-2.0, -1.0, 0.0, 1.0, 2.0]) >= 0.85
    assert float(pred[-1] - pred[0]) > 1.0


def test_partial_supervision_with_several_entries_per_position(tiny):
    model = tiny_causal_lm(len(tiny.tokenizer), seed=3)
    head = model.get_output_embeddings()
    hidden = model.model(input_ids=torch.tensor([[5, 9, 14]])).last_hidden_state[:, :2]
    targets = torch.tensor([[[9, 30, 31], [14, 0, 0]]])
    rewards = torch.tensor([[[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]]])
    mask = torch.tensor([[[1, 1, 1], [1, 0, 0]]], dtype=torch.float)
    loss = partial_supervision_loss(hidden, head, targets, rewards, mask)
    logits = model.lm_head(hidden)[0]
    ref = ((logits[0, [9, 30, 31]] - torch.tensor([0.5, -1.0, 2.0])) ** 2).sum() + (logits[1, 14] - 1.0) ** 2
    assert float(loss) == pytest.approx(float(ref) / 4, rel=1e-5)


def test_gathered_rows_include_the_output_layers_lora(tiny):
    """With LoRA on the output layer, the loss on gathered rows equals the loss on the full logits."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        tiny_causal_lm(len(tiny.tokenizer), seed=3),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "lm_head"], lora_dropout=0.0),
    )
    head = model.get_output_embeddings()
    torch.manual_seed(0)
    torch.nn.init.normal_(head.lora_B["default"].weight, std=0.5)  # zero at init: make the delta real
    hidden = model.get_base_model().model(input_ids=torch.tensor([[5, 9, 14]])).last_hidden_state[:, :2]
    targets = torch.tensor([[[9, 30, 31], [14, 0, 0]]])
    rewards = torch.tensor([[[0.5, -1.0, 2.0], [1.0, 0.0, 0.0]]])
    mask = torch.tensor([[[1, 1, 1], [1, 0, 0]]], dtype=torch.float)
    loss = partial_supervision_loss(hidden, head, targets, rewards, mask).detach()
    logits = head(hidden)[0].detach()
    assert not torch.allclose(logits, head.base_layer(hidden)[0].detach())
    ref = ((logits[0, [9, 30, 31]] - torch.tensor([0.5, -1.0, 2.0])) ** 2).sum() + (logits[1, 14] - 1.0) ** 2
    assert float(loss) == pytest.approx(float(ref) / 4, rel=1e-5)


def test_head_lora_trains_the_output_layer_and_loads_back(tmp_path, reward_file, tiny_base_dir, tiny):
    out = tmp_path / "mrm"
    trained = train_mrm(_cfg(reward_file, tiny_base_dir, out, epochs=3, head_lora=True), progress=False)
    head = trained.model.get_output_embeddings()
    assert float(head.lora_B["default"].weight.detach().abs().sum()) > 0  # the head's rows moved
    loaded = load_mrm(out, policy_tokenizer=tiny.tokenizer)
    r = read_jsonl(reward_file, TokenRewardRecord)[0]
    ids = torch.tensor([loaded.template.prompt_ids(tiny.tokenizer, r.prompt) + r.response_ids])
    with torch.no_grad():
        assert torch.allclose(loaded.model(input_ids=ids).logits, trained.model(input_ids=ids).logits, atol=1e-5)
    assert "and the output layer" in (out / "README.md").read_text()
    from safetensors import safe_open

    with safe_open(str(out / "adapter_model.safetensors"), framework="pt") as f:
        assert all("lora_" in k for k in f.keys())  # the adapter only, never the tied embedding


def test_loraplus_ratio_gives_the_b_matrices_a_larger_learning_rate(tmp_path, reward_file, tiny_base_dir, tiny):
    from saffron_runtime.models.loading import load_policy
    from saffron_runtime.training.mrm_train import _lora_model, _optimizer

    cfg = _cfg(reward_file, tiny_base_dir, tmp_path / "m", lr=1e-3, loraplus_ratio=16, head_lora=True)
    model = _lora_model(load_policy(str(tiny_base_dir), dtype="float32"), cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {"lora_A": set(), "lora_B": set()}
    for group in _optimizer(model, cfg).param_groups:
        for p in group["params"]:
            lrs["lora_B" if "lora_B" in names[id(p)] else "lora_A"].add(group["lr"])
    assert lrs["lora_A"] == {1e-3} and [round(x, 9) for x in lrs["lora_B"]] == [0.016]
    plain = _optimizer(model, _cfg(reward_file, tiny_base_dir, tmp_path / "m", lr=1e-3))
    assert {g["lr"] for g in plain.param_groups} == {1e-3}


def test_initial_token_bias_is_each_tokens_mean_reward_relative_to_its_siblings():
    from saffron_runtime.training.mrm_train import initial_token_bias
    from saffron_runtime.training.reward_data import ChildRewards

    def rec(i, children):
        return TokenRewardRecord(id=f"r{i}", prompt="p", response_ids=[5, 6, 7, 8], rewards=[0.0] * 4,
                                 children=children)

    records = [
        rec(0, [ChildRewards(t=0, ids=[1, 2, 3], rewards=[3.0, 0.0, 0.0])]),  # mean 1: +2, -1, -1
        rec(1, [ChildRewards(t=1, ids=[1, 4], rewards=[5.0, 7.0]),  # mean 6: -1, +1
                ChildRewards(t=2, ids=[9], rewards=[100.0]),  # a lone child carries no order
                ChildRewards(t=3, ids=[8, 2], rewards=[0.0, 4.0])]),  # beyond max_resp=3: not read
    ]
    bias = initial_token_bias(records, vocab_size=10, max_resp=3)
    # sum of centred rewards / (count + 1 pseudo-count)
    assert bias.tolist() == pytest.approx([0, (2 - 1) / 3, -1 / 2, -1 / 2, 1 / 2, 0, 0, 0, 0, 0])


def test_token_bias_and_final_norm_train_save_resume_and_load_back(tmp_path, reward_file, tiny_base_dir, tiny):
    """The bias starts from the data, moves in training, survives a resume exactly, is saved beside the
    adapter and applied by every forward of the loaded MRM; the trained final norm loads back too."""
    from saffron_runtime.models.token_bias import TOKEN_BIAS_FILE, token_bias
    from saffron_runtime.training.mrm_train import initial_token_bias
    from saffron_runtime.training.reward_data import ChildRewards

    records = read_jsonl(reward_file, TokenRewardRecord)
    kids = [11, 23, 37, 51]
    data = tmp_path / "children.jsonl"
    data.write_text("".join(
        r.model_copy(update={"children": [ChildRewards(t=1, ids=kids, rewards=[-1.5, -0.5, 0.5, 1.5])]})
        .model_dump_json() + "\n" for r in records))
    kw = dict(token_bias=True, train_final_norm=True, epochs=1000, checkpoint_every=2)
    whole = train_mrm(_cfg(data, tiny_base_dir, tmp_path / "whole", max_steps=6, **kw), progress=False)
    train_mrm(_cfg(data, tiny_base_dir, tmp_path / "resumed", max_steps=3, **kw), progress=False)
    resumed = train_mrm(_cfg(data, tiny_base_dir, tmp_path / "resumed", max_steps=6, **kw), progress=False)
    init = initial_token_bias(read_jsonl(data, TokenRewardRecord), len(tiny.tokenizer), 256)
    assert init[kids].tolist() == pytest.approx([-1.5 * 8 / 9, -0.5 * 8 / 9, 0.5 * 8 / 9, 1.5 * 8 / 9])
    trained_bias = token_bias(whole.model).detach()
    assert not torch.equal(trained_bias, init) and torch.equal(token_bias(resumed.model).detach(), trained_bias)
    norm = whole.model.get_base_model().model.norm
    assert not torch.equal(norm.modules_to_save["default"].weight, norm.original_module.weight)

    loaded = load_mrm(tmp_path / "whole", policy_tokenizer=tiny.tokenizer)
    r = records[0]
    ids = torch.tensor([loaded.template.prompt_ids(tiny.tokenizer, r.prompt) + r.response_ids])
    with torch.no_grad():
        want = whole.model(input_ids=ids).logits
        assert torch.allclose(loaded.model(input_ids=ids).logits, want, atol=1e-5)
        assert torch.allclose(loaded.rewards(ids), want[:, -1], atol=1e-5)
        (tmp_path / "whole" / TOKEN_BIAS_FILE).unlink()
        without = load_mrm(tmp_path / "whole", policy_tokenizer=tiny.tokenizer)
        assert torch.allclose(without.rewards(ids) + trained_bias, want[:, -1], atol=1e-5)
    card = (tmp_path / "whole" / "README.md").read_text()
    assert "a learnable per-token bias" in card and "the final norm trained" in card


def test_final_norm_scale_starts_the_trained_gain_at_that_fraction_of_the_base(tmp_path, reward_file, tiny_base_dir):
    from saffron_runtime.models.loading import load_policy
    from saffron_runtime.training.mrm_train import _lora_model

    cfg = _cfg(reward_file, tiny_base_dir, tmp_path / "m", train_final_norm=True, final_norm_scale=0.1)
    norm = _lora_model(load_policy(str(tiny_base_dir), dtype="float32"), cfg).get_base_model().model.norm
    assert norm.modules_to_save["default"].weight.requires_grad
    assert torch.allclose(norm.modules_to_save["default"].weight, 0.1 * norm.original_module.weight)
    assert not norm.original_module.weight.requires_grad
