"""Runnable examples: each runs offline on SmolLM2 in test mode and does what its docstring claims."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from langchain_core.messages import AIMessage, ToolMessage

pytestmark = pytest.mark.smollm2

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # pydantic resolves the models' annotations through it
    spec.loader.exec_module(module)
    return module


def test_guarded_chain_stats_and_stream_equals_invoke(smollm2):
    out = _load("guarded_chain").run(test=True)
    assert out["invoked"] and out["streamed"] == out["invoked"]
    assert out["stream_chunks"] > 1  # really streamed, not one final chunk
    stats = out["stats"]
    assert stats["method"] == "saffron" and stats["steps"] > 0 and stats["reward_forwards"] > 0
    assert len(out["batched"]) == 1 and out["batched"][0]


def test_any_model_guard_stops_the_harmful_stream_at_the_verdict_token(smollm2):
    out = _load("any_model_guard").run(test=True)
    benign, harmful = out["benign"], out["harmful"]
    assert benign["verdict"] is None and benign["shown"] == benign["unguarded"]
    v = harmful["verdict"]
    assert v is not None and v.unsafe
    shown, full = harmful["shown"], harmful["unguarded"]
    assert full.startswith(shown) and len(full) > len(shown)
    # the stream stopped within one chunk after the chunk holding the firing token: the chunk that let the
    # monitor confirm the token (its re-tokenisation holds two pieces back) and everything after it never
    # reached the caller
    last_two = "".join(harmful["chunks"][-2:])
    assert v.span is not None and len(shown) - len(last_two) < v.span[1] <= len(shown)


def test_agent_tool_result_is_withheld_and_the_run_finishes(smollm2):
    out = _load("agent_tool_guardrails").run(test=True)
    assert len(out["tool_results"]) == 1
    assert out["tool_results"][0].startswith("[tool result withheld by the guardrail")
    assert "hammer" not in out["tool_results"][0]
    final = out["final"]
    assert isinstance(final, AIMessage) and not final.tool_calls and final.content
    assert not any(isinstance(m, ToolMessage) and "hammer" in m.content for m in out["messages"])
    assert out["verdicts"] and out["verdicts"][0]["unsafe"]


def test_rag_blocks_the_harmful_request_and_answers_the_benign_one(smollm2):
    out = _load("rag_app").run(test=True)
    assert any("yeast" in d for d in out["retrieved"])  # MiniLM retrieved the relevant document
    assert out["benign"]["saffron"]["blocked"] is False and out["benign"]["answer"]
    harmful = out["harmful"]
    assert harmful["saffron"]["blocked"] is True and harmful["saffron"]["verdicts"]
    assert harmful["answer"] == "I can't help with that."


@pytest.mark.parametrize("name", ["guarded_chain"])
def test_example_script_runs_from_the_command_line(name, smollm2):
    done = subprocess.run([sys.executable, str(EXAMPLES / f"{name}.py"), "--test"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "search : method=saffron" in done.stdout


def test_search_agent_rewards_match_egrpo_and_unsafe_is_never_picked(smollm2, capsys, monkeypatch):
    import json

    from saffron_runtime.rewards import egrpo_rewards

    module = _load("search_agent_entity_reward")
    monkeypatch.setattr(sys, "argv", ["x", "--test", "--inject-unsafe"])
    module.main()
    lines = capsys.readouterr().out.splitlines()
    rows = [json.loads(x) for x in lines if x.startswith("{")]
    picks = [x for x in lines if x.startswith("picked rollout")]
    questions = {q["question"]: q for q in module.QUESTIONS}
    assert len(picks) == 2 and len(rows) == 6
    for qi, pick in enumerate(picks):
        q = rows[3 * qi]["question"]
        group = [r for r in rows if r["question"] == q]
        want = egrpo_rewards([r["thoughts"] for r in group], questions[q]["gold_entities"],
                             [r["correct"] for r in group], errors=[r["error"] for r in group])
        assert [r["reward"] for r in group] == want  # the printed rewards are E-GRPO's on the printed thoughts
        injected = group[0]
        assert injected["reward"] == 1.0 == max(want) and injected["safe"] is False
        assert not pick.startswith("picked rollout 0")  # the injected unsafe rollout is never picked
        assert "hammer" not in pick
    assert any(r["safe"] and r["rollout"] > 0 for r in rows)  # real SmolLM2 rollouts took part
