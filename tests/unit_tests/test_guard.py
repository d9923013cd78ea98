"""The shared guard helpers of the LangChain package: message text, fail-closed judging, verdict
metadata, on_violation, and reading a guarded model's own verdicts back."""

from __future__ import annotations

import math

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage

from langchain_saffron import _guard, rollouts
from langchain_saffron._guard import (
    blocked_message,
    cleared_text,
    enforce,
    judge_text,
    last_user_text,
    message_text,
    model_verdicts,
    saffron_metadata,
    verdict_from_dict,
    violation,
)
from saffron_runtime import errors
from saffron_runtime.errors import GuardrailViolation, Verdict
from saffron_runtime.monitor import CallableMonitor

FLAG = Verdict(unsafe=True, rule="delay-k", score=0.9, position=3, span=(4, 8), reason="harm")


def bomb_monitor() -> CallableMonitor:
    return CallableMonitor(lambda p, t: float("bomb" in t), every_chars=1)


def test_message_text_reads_strings_blocks_and_dicts():
    blocks = [{"type": "text", "text": "a "}, "b ", {"type": "image_url", "image_url": {"url": "x"}},
              {"type": "tool_use", "id": "1", "name": "f", "input": {}}, {"text": "c"}]
    assert message_text(AIMessage("plain")) == "plain"
    assert message_text(AIMessage(content=blocks)) == "a b c"  # attachments and calls skipped
    assert message_text({"role": "assistant", "content": blocks}) == "a b c"
    assert message_text({"role": "user", "content": None}) == ""


def test_last_user_text_takes_the_latest_human_or_user_dict():
    msgs = [SystemMessage("s"), HumanMessage("first"), AIMessage("x"), {"role": "user", "content": "last"},
            ToolMessage("t", tool_call_id="1")]
    assert last_user_text(msgs) == "last"
    assert last_user_text(msgs[:3]) == "first"
    assert last_user_text([SystemMessage("s")]) == "" and last_user_text([]) == ""


def test_judge_text_judges_once_and_fails_closed():
    assert judge_text(bomb_monitor(), "q", "a cake") is None
    assert judge_text(bomb_monitor(), "q", "") is None
    assert judge_text(bomb_monitor(), "q", "a bomb").rule == "callable-threshold"

    class Broken:
        def open(self, prompt):
            raise RuntimeError("monitor offline")

    failed = judge_text(Broken(), "q", "anything")
    assert failed.unsafe and failed.monitor_failed and "RuntimeError: monitor offline" in failed.reason

    class Judging:  # a monitor that raises our own error has judged: its verdict is kept
        def open(self, prompt):
            raise GuardrailViolation(FLAG)

    assert judge_text(Judging(), "q", "anything") is FLAG


def test_metadata_builder_and_blocked_message():
    meta = saffron_metadata([FLAG, FLAG.to_dict()], on_violation="refuse", stats={"steps": 2})["saffron"]
    assert meta["blocked"] is True and meta["on_violation"] == "refuse" and meta["stats"] == {"steps": 2}
    assert meta["verdicts"] == [FLAG.to_dict(), FLAG.to_dict()] and meta["verdicts"][0]["span"] == [4, 8]
    clean = saffron_metadata([], blocked=False, on_violation="refuse")["saffron"]
    assert clean == {"blocked": False, "on_violation": None, "verdicts": []}  # no block, no action
    msg = blocked_message("no", [FLAG], "truncate")
    assert msg.content == "no" and not msg.tool_calls
    assert msg.response_metadata == saffron_metadata([FLAG], on_violation="truncate")


def test_one_default_refusal():
    assert _guard.DEFAULT_REFUSAL is errors.DEFAULT_REFUSAL is rollouts.DEFAULT_REFUSAL


def test_enforce_violation_and_cleared_text():
    enforce(FLAG, "refuse")
    enforce(FLAG, "truncate")
    with pytest.raises(GuardrailViolation) as e:
        enforce(FLAG, "raise")
    assert e.value.verdict is FLAG and cleared_text(e.value) == ""
    assert cleared_text(violation(FLAG, "safe so far")) == "safe so far"


def test_verdicts_round_trip_and_model_verdicts():
    assert verdict_from_dict({**FLAG.to_dict(), "unknown": 1}) == FLAG
    judged = AIMessage("x", response_metadata=saffron_metadata([FLAG], on_violation="refuse"))
    assert model_verdicts(judged) == (True, [FLAG])
    assert model_verdicts(AIMessage("x", response_metadata=saffron_metadata([], blocked=False))) == (False, [])
    assert model_verdicts(AIMessage("x")) is None  # not judged by the model: judge it yourself
    bare = AIMessage("x", response_metadata={"saffron": {"blocked": True}})
    blocked, verdicts = model_verdicts(bare)
    assert blocked and verdicts[0].unsafe and verdicts[0].rule == "model" and math.isnan(verdicts[0].score)
