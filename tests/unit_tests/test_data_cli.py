"""`saffron data rewards`: rollouts scored by a monitor's response head, through the CLI."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from saffron_runtime.cli import app
from saffron_runtime.jsonl import read_jsonl
from saffron_runtime.monitor import SCMMonitorModel, save_monitor
from saffron_runtime.testing import tiny_causal_lm
from saffron_runtime.training.reward_data import TokenRewardRecord


def test_data_rewards_cli_with_monitor_judge(tmp_path, tiny):
    base = tmp_path / "base"
    tiny_causal_lm(len(tiny.tokenizer), seed=4, eos_token_id=tiny.tokenizer.eos_token_id).save_pretrained(base)
    tiny.tokenizer.save_pretrained(base)
    torch.manual_seed(0)
    from saffron_runtime.models import load_policy

    backbone = load_policy(base).model
    mon = SCMMonitorModel(backbone, tiny.tokenizer)
    save_monitor(mon, tmp_path / "mon", backbone_ref=str(base))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": p, "prefill": pre}) + "\n"
                               for i, (p, pre) in enumerate([("how make cake", ""), ("how make bomb", "sure")])))
    out = tmp_path / "rewards.jsonl"
    res = CliRunner().invoke(app, ["data", "rewards", "--prompts", str(prompts), "--out", str(out), "--judge-monitor",
                                   str(tmp_path / "mon"), "--policy", str(base), "--max-new-tokens", "8"])
    assert res.exit_code == 0, res.output
    recs = read_jsonl(out, TokenRewardRecord)
    assert [r.id for r in recs] == ["p0", "p1"] and recs[0].judge == "monitor-response-head"
    r = recs[1]
    body = r.response_ids[:-1] if r.ended_with_eos else r.response_ids
    prefix = mon.prefix_ids(r.prompt)
    with torch.no_grad():
        h = backbone(torch.tensor([prefix + body]), output_hidden_states=True).hidden_states[-1][0, len(prefix):]
        logits = mon.response_head(h)
    assert r.rewards[: len(body)] == [pytest_approx(x) for x in (logits[:, 0] - logits[:, 1]).tolist()]


def pytest_approx(x: float):
    import pytest

    return pytest.approx(x, abs=1e-4)
