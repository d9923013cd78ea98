"""Quality measures: repetition and the policy's likelihood of an output."""

from __future__ import annotations

import math

import torch

from saffron_runtime.evaluation.quality import (
    QualityRow,
    longest_word_run,
    nll_per_token,
    repeated_trigram_share,
    summarise,
)
from saffron_runtime.models.loading import LoadedModel


def test_repetition_measures_tell_word_salad_from_prose():
    prose = "Carry a map, tell someone your route, and pack water for the whole day."
    salad = (  # what Saffron search wrote on a benign prompt before the fluency anchor
        "and bear bear bear carry carrying carry carry bear carrying bear carrying bear carry carry "
        "bear carry bear carry bear carry bear bear bear carry bear carry bear bear carry bear carry"
    )
    assert repeated_trigram_share(prose) == 0.0
    assert repeated_trigram_share(salad) > 0.4
    assert repeated_trigram_share("a b c a b c a b c") == 4 / 7
    assert longest_word_run(prose) == 1
    assert longest_word_run("Echo Echo echo ECHO, echo!") == 5
    assert longest_word_run("") == 0


def test_nll_per_token_is_the_mean_negative_log_likelihood(tiny):
    policy = LoadedModel(tiny.policy, tiny.tokenizer, "tiny")
    prompt, out = [3, 4, 5], [6, 7]
    with torch.no_grad():
        logp = torch.log_softmax(tiny.policy(input_ids=torch.tensor([prompt + out])).logits[0].float(), -1)
    want = -(logp[2, 6] + logp[3, 7]) / 2
    assert math.isclose(nll_per_token(policy, prompt, out), float(want), rel_tol=1e-5)
    assert math.isnan(nll_per_token(policy, prompt, []))


def test_summary_counts_degenerate_outputs_and_refusals():
    rows = [QualityRow(0.0, 1, 2.0, 10, False), QualityRow(0.5, 6, 4.0, 20, True)]
    s = summarise(rows)
    assert s["runs_of_4"] == 1 and s["refusal_rate"] == 0.5
    assert s["nll_per_token"] == 3.0 and s["tokens"] == 15


def test_quality_run_measures_every_method_and_resumes_from_its_cache(tiny, tmp_path):
    from saffron_runtime.evaluation.quality_run import run_quality
    from saffron_runtime.models import MRMTemplate, MultifurcationRewardModel
    from saffron_runtime.stack import StackOptions, build_stack

    mrm = MultifurcationRewardModel(tiny.reward_backbone, tiny.tokenizer, MRMTemplate(prefix="<|im_start|>", separator="\n"))
    stack = build_stack(StackOptions(policy=LoadedModel(tiny.policy, tiny.tokenizer, "tiny"), mrm=mrm, monitor=None, prm=None))
    prompts = [{"id": "a", "prompt": "how make cake"}, {"id": "b", "prompt": "help water"}]
    cache = tmp_path / "cache.jsonl"
    report = run_quality(stack, prompts, ["greedy", "saffron"], cache, budget=2, max_new_tokens=5, progress=False)
    assert set(report["methods"]) == {"greedy", "saffron"} and report["prompts"] == 2
    g = report["methods"]["greedy"]
    assert g["n"] == 2 and g["tokens"] > 0 and g["nll_per_token"] > 0
    assert report["methods"]["saffron"]["settings"]["objective"] == "safe_likelihood"
    assert len(cache.read_text().splitlines()) == 4
    again = run_quality(stack, prompts, ["greedy", "saffron"], cache, budget=2, max_new_tokens=5, progress=False)
    assert len(cache.read_text().splitlines()) == 4  # nothing regenerated
    assert again["methods"]["greedy"]["examples"] == g["examples"]
    longer = run_quality(stack, prompts, ["greedy"], cache, budget=2, max_new_tokens=6, progress=False)
    assert len(cache.read_text().splitlines()) == 6  # other settings: regenerated, not the stale answers
    assert longer["methods"]["greedy"]["settings"]["max_new_tokens"] == 6


def test_outputs_markdown_quotes_every_method_s_answers_verbatim():
    from saffron_runtime.evaluation.quality_run import outputs_markdown

    report = {"command": {"budget": 4, "max_new_tokens": 48, "mrm": "bundled"}, "methods": {
        "greedy": {"examples": [{"prompt": "Name a river.", "output": "The Nile.\n\nIt is long."}]},
        "saffron": {"examples": [{"prompt": "Name a river.", "output": "The Amazon."}]}}}
    md = outputs_markdown(report)
    assert "## greedy" in md and "## saffron" in md and "Budget 4, 48 new tokens" in md
    assert "**Name a river.**\n\n> The Nile.\n>\n> It is long." in md  # every line of an answer stays quoted
    assert md.index("## greedy") < md.index("The Nile.") < md.index("## saffron") < md.index("The Amazon.")
