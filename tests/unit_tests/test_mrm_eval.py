"""MRM evaluation: Spearman and bootstrap against hand values, and evaluate_mrm on oracle MRMs."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from saffron_runtime.errors import DataError
from saffron_runtime.evaluation.mrm_eval import bootstrap_ci, evaluate_mrm, spearman
from saffron_runtime.jsonl import read_jsonl
from saffron_runtime.models.loading import LoadedModel
from saffron_runtime.models.mrm import MRM_TEMPLATES, MultifurcationRewardModel
from saffron_runtime.training.judges import CausalHeadJudge
from saffron_runtime.training.reward_data import PromptItem, TokenRewardRecord, build_reward_data


def test_spearman_hand_values_and_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # average ranks for ties: x ranks [1, 2.5, 2.5, 4] against [1, 2, 3, 4] -> 4.5 / sqrt(4.5 * 5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert spearman([1, 1, 1], [1, 2, 3]) != spearman([1, 1, 1], [1, 2, 3])  # NaN when constant
    with pytest.raises(ValueError, match="3 values against 2"):
        spearman([1, 2, 3], [1, 2])


def test_bootstrap_ci_brackets_the_mean():
    vals = [0.1, 0.5, 0.2, 0.9, -0.3, 0.4, 0.6, 0.0]
    lo, hi = bootstrap_ci(vals, n_boot=500)
    assert lo < sum(vals) / len(vals) < hi
    assert bootstrap_ci([0.3] * 5) == pytest.approx((0.3, 0.3))
    with pytest.raises(DataError):
        bootstrap_ci([])


class _OracleLM(torch.nn.Module):
    """An 'MRM' whose reward for every next token is the judge's margin for that extension (x sign)."""

    def __init__(self, judge_backbone, head, sign: float) -> None:
        super().__init__()
        self.backbone, self.head, self.sign = judge_backbone, head, sign

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, logits_to_keep=0):
        ids = input_ids[0]
        vocab = self.backbone.config.vocab_size
        start = ids.numel() - logits_to_keep if logits_to_keep else 0
        rows = []
        for p in range(start, ids.numel()):
            batch = torch.cat([ids[: p + 1].expand(vocab, -1), torch.arange(vocab)[:, None]], 1)
            h = self.backbone(input_ids=batch, output_hidden_states=True).hidden_states[-1][:, -1]
            logit = self.head(h)
            rows.append(self.sign * (logit[:, 0] - logit[:, 1]))
        return SimpleNamespace(logits=torch.stack(rows)[None])


@pytest.fixture(scope="module")
def judged(tiny, tmp_path_factory):
    torch.manual_seed(0)
    head = torch.nn.Linear(tiny.reward_backbone.config.hidden_size, 2)
    tmpl = MRM_TEMPLATES["chatml"]
    judge = CausalHeadJudge(tiny.reward_backbone, head, lambda p: tmpl.prompt_ids(tiny.tokenizer, p))
    policy = LoadedModel(model=tiny.policy, tokenizer=tiny.tokenizer, source="tiny")
    items = [PromptItem(id=f"q{i}", prompt=f"how make {w}", prefill="sure" if i % 2 else "")
             for i, w in enumerate(["cake", "bomb", "water", "plan"])]
    out = tmp_path_factory.mktemp("mrm-eval") / "held_out.jsonl"
    build_reward_data(policy, judge, items, out, max_new_tokens=5, batch_size=4, progress=False)
    # an EOS entry is supervised with the full-response score, which no next-token oracle reproduces
    records = [r for r in read_jsonl(out, TokenRewardRecord) if not r.ended_with_eos]
    assert len(records) >= 2
    return SimpleNamespace(judge=judge, head=head, tmpl=tmpl, policy=policy, records=records)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_evaluate_mrm_scores_an_oracle_perfectly_and_its_negation_worst(tiny, judged, sign):
    oracle = MultifurcationRewardModel(model=_OracleLM(tiny.reward_backbone, judged.head, sign),
                                       tokenizer=tiny.tokenizer, template=judged.tmpl)
    rep = evaluate_mrm(oracle, judged.judge, judged.policy, judged.records, n_prefixes=4,
                       max_children=4, n_boot=200)
    assert rep.pooled_spearman == pytest.approx(sign, abs=1e-6)
    assert rep.pooled_tokens == sum(len(r.response_ids) for r in judged.records)
    assert rep.within_prefix_n == 4 and rep.mean_children == 4
    assert rep.within_prefix_mean == pytest.approx(sign, abs=1e-6)
    assert rep.within_prefix_ci_low <= rep.within_prefix_mean <= rep.within_prefix_ci_high


def test_evaluate_mrm_needs_records(tiny, judged):
    oracle = MultifurcationRewardModel(model=_OracleLM(tiny.reward_backbone, judged.head, 1.0),
                                       tokenizer=tiny.tokenizer, template=judged.tmpl)
    with pytest.raises(DataError, match="no held-out records"):
        evaluate_mrm(oracle, judged.judge, judged.policy, [])
