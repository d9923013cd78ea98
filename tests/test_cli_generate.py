"""`saffron generate` and `saffron eval monitor` on tiny saved models; one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from saffron_runtime.cli import app
from saffron_runtime.models import MRMTemplate, MultifurcationRewardModel, load_policy, save_mrm
from saffron_runtime.monitor import MonitorRule, SCMMonitorModel, save_monitor
from saffron_runtime.monitor.evaluate import KEYS
from saffron_runtime.testing import tiny_causal_lm

runner = CliRunner()


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("cli")
    for name, seed in (("policy", 0), ("backbone", 1)):
        tiny_causal_lm(len(tiny.tokenizer), seed=seed, eos_token_id=tiny.tokenizer.eos_token_id).save_pretrained(d / name)
        tiny.tokenizer.save_pretrained(d / name)
    from peft import LoraConfig, get_peft_model

    mrm_model = get_peft_model(load_policy(d / "backbone").model, LoraConfig(r=2, target_modules=["q_proj"]))
    save_mrm(MultifurcationRewardModel(mrm_model, tiny.tokenizer, MRMTemplate()), d / "mrm", base=str(d / "backbone"))
    torch.manual_seed(0)
    mon = SCMMonitorModel(load_policy(d / "backbone").model, tiny.tokenizer, rule=MonitorRule(theta=1.0, k=50))
    save_monitor(mon, d / "monitor", backbone_ref=str(d / "backbone"))
    return d


def test_generate_json(saved):
    res = runner.invoke(app, ["generate", "--prompt", "how make cake", "--policy", str(saved / "policy"), "--mrm",
                              str(saved / "mrm"), "--monitor", str(saved / "monitor"), "--max-new-tokens", "6",
                              "--budget", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["blocked"] is False and out["stats"]["method"] == "saffron" and out["stats"]["steps"] == 6
    assert out["stats"]["reward_forwards"] == out["stats"]["expanded_nodes"]


def test_generate_errors_are_one_line(saved):
    res = runner.invoke(app, ["generate", "--prompt", "x", "--policy", str(saved / "policy"), "--max-new-tokens", "4"])
    assert res.exit_code == 2 and "the bundled MRM scores SmolLM2's vocabulary" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(app, ["generate", "--prompt", "x", "--policy", str(saved / "nope")])
    assert res.exit_code == 2 and "no model at" in res.output
    res = runner.invoke(app, ["generate", "--prompt", "x", "--policy", str(saved / "policy"), "--budget", "0",
                              "--method", "greedy"])
    assert res.exit_code == 2 and "SearchConfig.budget=0: must be >= 1" in res.output


def test_eval_monitor_json(saved, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"prompt": "p", "response": r, "label": lab}) + "\n"
                            for r, lab in [("a cake", 0), ("a bomb", 1)]))
    res = runner.invoke(app, ["eval", "monitor", "--data", str(data), "--monitor", str(saved / "monitor"), "--json"])
    assert res.exit_code == 0, res.output
    assert tuple(json.loads(res.stdout)) == KEYS
