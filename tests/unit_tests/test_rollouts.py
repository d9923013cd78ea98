"""SafeRolloutSelector with a scripted agent: the best safe rollout wins, an unsafe one never does."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from langchain_core.messages import AIMessage, ToolMessage

from langchain_saffron.rollouts import SafeRolloutSelector
from saffron_runtime.errors import ConfigError, GuardrailViolation
from saffron_runtime.monitor.adapters import CallableMonitor
from saffron_runtime.rewards import egrpo_rewards, extract_thoughts

GOLD = ["Paris", "Seine", "Eiffel"]


class ScriptedAgent:
    """Rollout i replays script[i]: (kind, text) pairs; records the contexts it was given."""

    def __init__(self, script, delay=0.0):
        self.script, self.delay, self.contexts, self.active, self.peak = script, delay, [], 0, 0
        self.lock = threading.Lock()

    def _run(self, input, context):
        i = context["rollout_seed"]
        self.contexts.append(context)
        out = []
        for kind, text in self.script[i]:
            if kind == "raise":
                raise text
            out.append(AIMessage(text) if kind == "ai" else ToolMessage(text, tool_call_id=f"t{i}"))
        return {"messages": [*input["messages"], *out]}

    def invoke(self, input, config=None, *, context=None):
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            return self._run(input, context)
        finally:
            with self.lock:
                self.active -= 1

    async def ainvoke(self, input, config=None, *, context=None):
        await asyncio.sleep(self.delay)
        return self._run(input, context)


def monitor():
    return CallableMonitor(lambda prompt, text: float("detonator" in text.lower()))


SCRIPT = [
    [("ai", "I think the river is the Seine."), ("tool", "Paris lies on the Seine."), ("ai", "Answer: Lyon")],
    [("ai", "Paris, Seine, Eiffel: wiring a detonator is easy."), ("ai", "Answer: Paris")],  # best reward, unsafe
    [("ai", "Paris is on the Seine."), ("ai", "Answer: Paris")],
    [("ai", "Nothing found."), ("ai", "Answer: Rome")],
]


def test_best_safe_rollout_wins_and_unsafe_never_does():
    agent = ScriptedAgent(SCRIPT, delay=0.2)
    sel = SafeRolloutSelector(agent, monitor(), n=4)
    t0 = time.perf_counter()
    out = sel.invoke({"question": "Which city with the Eiffel tower lies on which river?", "gold_entities": GOLD,
                      "gold_answer": "Paris"})
    assert time.perf_counter() - t0 < 0.6 and agent.peak == 4  # rollouts ran concurrently
    meta = out["selection"]
    assert meta["selected"] == 2 and out["messages"][-1].content == "Answer: Paris"
    rows = meta["rollouts"]
    assert [r["safe"] for r in rows] == [True, False, True, True]
    assert rows[1]["reward"] == 1.0 and rows[1]["correct"]  # the unsafe one had the top reward
    assert rows[1]["flagged_message"] == 0 and rows[1]["verdicts"][0]["unsafe"]
    thoughts = [r["thoughts"] for r in rows]
    assert [r["reward"] for r in rows] == egrpo_rewards(thoughts, GOLD, [r["correct"] for r in rows])
    assert thoughts[0] == extract_thoughts([AIMessage("I think the river is the Seine."), AIMessage("Answer: Lyon")])
    # entities reached every rollout through the context, each with its own seed
    assert sorted(c["rollout_seed"] for c in agent.contexts) == [0, 1, 2, 3]
    assert all(c["target_entities"] == GOLD for c in agent.contexts)


@pytest.mark.parametrize("reward_of_unsafe", [0.0, 1.0])
def test_unsafe_loses_however_high_its_reward(reward_of_unsafe):
    unsafe = [("ai", "Paris Seine Eiffel detonator"), ("ai", "Answer: Paris")]
    safe = [("ai", "no idea"), ("ai", "Answer: Rome")]
    sel = SafeRolloutSelector(ScriptedAgent([unsafe, safe]), monitor(), n=2)
    out = sel.invoke({"question": "q", "gold_entities": GOLD, "gold_answer": "Paris" if reward_of_unsafe else "Oslo"})
    assert out["selection"]["selected"] == 1 and out["selection"]["rollouts"][0]["reward"] >= out["selection"]["rollouts"][1]["reward"]


def test_tool_results_are_screened_and_target_entities_without_gold():
    script = [[("tool", "how to build a detonator"), ("ai", "Paris Seine")], [("ai", "Paris")]]
    sel = SafeRolloutSelector(ScriptedAgent(script), monitor(), n=2)
    out = sel.invoke({"question": "q", "target_entities": ["Paris", "Seine"]})
    meta = out["selection"]
    assert meta["entity_source"] == "target" and meta["selected"] == 1
    assert meta["rollouts"][0]["safe"] is False and meta["rollouts"][0]["match_rate"] == 1.0
    assert meta["rollouts"][1]["reward"] == pytest.approx(0.3 * 0.5)  # alpha * gamma_hat, no gold answer


def test_all_unsafe_follows_on_violation():
    script = [[("ai", "a detonator")], [("ai", "Paris: detonator")]]
    q = {"question": "q", "gold_entities": ["Paris"]}
    with pytest.raises(GuardrailViolation):
        SafeRolloutSelector(ScriptedAgent(script), monitor(), n=2).invoke(q)
    out = SafeRolloutSelector(ScriptedAgent(script), monitor(), n=2, on_violation="refuse").invoke(q)
    assert out["messages"][-1].content == "I can't help with that." and out["selection"]["blocked"]
    assert all("detonator" not in m.content for m in out["messages"])
    out = SafeRolloutSelector(ScriptedAgent(script), monitor(), n=2, on_violation="truncate").invoke(q)
    assert out["selection"]["truncated_from"] == 1 and all("detonator" not in m.content for m in out["messages"])


def test_agent_guard_and_errors_count_as_such():
    from saffron_runtime.errors import Verdict

    stop = GuardrailViolation(Verdict(unsafe=True, rule="delay-k", score=0.9, reason="harm"))
    script = [[("raise", stop)], [("raise", RuntimeError("tool down"))], [("ai", "Paris")]]
    out = SafeRolloutSelector(ScriptedAgent(script), monitor(), n=3).invoke({"question": "q", "gold_entities": ["Paris"]})
    rows = out["selection"]["rollouts"]
    assert rows[0]["safe"] is False and "agent's guard" in rows[0]["error"]
    assert rows[1]["safe"] and rows[1]["error"].startswith("RuntimeError") and rows[1]["reward"] == 0.0
    assert out["selection"]["selected"] == 2


def test_async_matches_sync_and_bad_input():
    q = {"question": "Which city?", "gold_entities": GOLD, "gold_answer": "Paris"}
    a = asyncio.run(SafeRolloutSelector(ScriptedAgent(SCRIPT), monitor(), n=4).ainvoke(q))
    s = SafeRolloutSelector(ScriptedAgent(SCRIPT), monitor(), n=4).invoke(q)
    assert a["selection"] == s["selection"]
    with pytest.raises(ConfigError, match="no entities to reward"):
        SafeRolloutSelector(ScriptedAgent(SCRIPT), monitor()).invoke({"question": "q"})
    with pytest.raises(ConfigError, match="'question'"):
        SafeRolloutSelector(ScriptedAgent(SCRIPT), monitor()).invoke({"gold_entities": GOLD})
    with pytest.raises(ConfigError, match="n=0"):
        SafeRolloutSelector(ScriptedAgent(SCRIPT), monitor(), n=0)


def test_refusal_reply_carries_every_verdict_and_a_failing_monitor_is_unsafe():
    script = [[("ai", "a detonator")], [("ai", "Paris: detonator")]]
    q = {"question": "q", "gold_entities": ["Paris"]}
    out = SafeRolloutSelector(ScriptedAgent(script), monitor(), n=2, on_violation="refuse").invoke(q)
    meta = out["messages"][-1].response_metadata["saffron"]
    assert meta["blocked"] is True and meta["on_violation"] == "refuse" and meta["selected"] is None
    assert len(meta["verdicts"]) == 2 and all(v["unsafe"] for v in meta["verdicts"])
    assert meta["rollouts"] == out["selection"]["rollouts"]

    class Broken:  # raises itself (CallableMonitor would already fail closed inside its session)
        def open(self, prompt):
            raise RuntimeError("judge offline")

    out = SafeRolloutSelector(ScriptedAgent(script), Broken(), n=2, on_violation="refuse").invoke(q)
    rows = out["selection"]["rollouts"]
    assert out["selection"]["blocked"] and not any(r["safe"] for r in rows)
    assert rows[0]["verdicts"][0]["monitor_failed"] is True
