"""Fail closed everywhere: a monitor that raises, times out, or scores NaN / inf mid-stream stops the
stream with a ``monitor-failed`` verdict in every way of guarding (ChatSaffron invoke / stream /
astream, the guard callback sync and async, the agent middleware); ``fail_open=True`` lets the same
text through unchanged, with a logged warning."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, HumanMessage

from langchain_saffron.callbacks import (
    AsyncSaffronGuardCallbackHandler,
    SaffronGuardCallbackHandler,
)
from langchain_saffron.chat_models import ChatSaffron
from langchain_saffron.middleware import SaffronGuardrailMiddleware
from saffron_runtime.errors import GuardrailViolation
from saffron_runtime.models import LoadedModel
from saffron_runtime.monitor import CallableMonitor, MonitorRule, SCMMonitor, SCMMonitorModel
from saffron_runtime.monitor.faults import MonitorFault, checked_score, open_session

BENIGN = "Sure here is how to bake a cake at home step by step"
FAULTS = ["scm-raises", "scm-nan", "scm-inf", "callable-raises", "callable-times-out",
          "callable-nan", "callable-inf"]


def faulty(tiny: Any, fault: str, *, fail_open: bool = False) -> Any:
    """A monitor that judges its first check cleanly and then fails as ``fault`` says (it never flags)."""
    calls: list[int] = []
    kind, what = fault.split("-", 1)
    if kind == "scm":
        torch.manual_seed(0)
        model = SCMMonitorModel(tiny.reward_backbone, tiny.tokenizer, rule=MonitorRule(theta=1.0, k=4096))
        real = model.head_scores

        def head_scores(hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            calls.append(1)
            tok, resp = real(hidden)
            if len(calls) < 2:
                return tok, resp
            if what == "raises":
                raise RuntimeError("CUDA error: an illegal memory access")
            return torch.full_like(tok, float("nan" if what == "nan" else "inf")), resp

        model.head_scores = head_scores  # type: ignore[method-assign]
        return SCMMonitor(model, fail_open=fail_open)

    def score(prompt: str, text: str) -> float:
        if len(text) <= 8:  # the first few characters are judged cleanly
            return 0.0
        if what == "raises":
            raise ConnectionError("moderation API is down")
        if what == "times-out":
            time.sleep(0.3)
            return 0.0
        return float("nan" if what == "nan" else "inf")

    return CallableMonitor(score, every_chars=4, timeout_s=0.05, retries=0, fail_open=fail_open)


def assert_failed(verdict: Any, fault: str) -> None:
    assert verdict.rule == "monitor-failed" and verdict.monitor_failed and verdict.unsafe
    why = {"raises": "Error", "times-out": "did not answer within", "nan": "nan", "inf": "inf"}
    assert why[fault.split("-", 1)[1]] in verdict.reason, verdict.reason


# ---------------------------------------------------------------------- the fault policy itself
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf"), "high", None])
def test_only_finite_numbers_count_as_scores(bad):
    with pytest.raises(MonitorFault, match="not a"):
        checked_score(bad, "scorer")
    assert checked_score(True, "scorer") == 1.0 and checked_score(0.25, "scorer") == 0.25


def test_a_monitor_that_cannot_even_open_fails_closed_or_open():
    class Broken:
        fail_open = False

        def open(self, prompt: str) -> Any:
            raise OSError("weights missing")

    s = open_session(Broken(), "p")
    assert s.feed_text("hello").rule == "monitor-failed" and s.release() == ""
    Broken.fail_open = True
    s = open_session(Broken(), "p")
    assert s.feed_text("hello") is None and s.finish() is None and s.release_all() == "hello"


# ---------------------------------------------------------------------- ChatSaffron
@pytest.fixture(scope="module")
def policy(tiny) -> LoadedModel:
    return LoadedModel(tiny.policy, tiny.tokenizer, "tiny-llama")


def chat(policy: LoadedModel, monitor: Any, **kw: Any) -> ChatSaffron:
    return ChatSaffron(policy=policy, mrm=None, prm=None, monitor=monitor, method="greedy",
                       max_tokens=12, min_new_tokens=12, max_commit_lag=1, **kw)


def run_mode(model: ChatSaffron, mode: str) -> str:
    if mode == "invoke":
        return str(model.invoke("hello").content)
    if mode == "stream":
        return "".join(str(c.content) for c in model.stream("hello"))

    async def collect() -> str:
        return "".join([str(c.content) async for c in model.astream("hello")])

    return asyncio.run(collect())


@pytest.mark.parametrize("mode", ["invoke", "stream", "astream"])
@pytest.mark.parametrize("fault", FAULTS)
def test_chat_saffron_stops_with_monitor_failed(policy, tiny, fault, mode):
    with pytest.raises(GuardrailViolation) as e:
        run_mode(chat(policy, faulty(tiny, fault)), mode)
    assert_failed(e.value.verdict, fault)
    if mode != "invoke":
        return
    cut = chat(policy, faulty(tiny, fault), on_violation="truncate").invoke("hello")
    clean = chat(policy, None).invoke("hello").content
    meta = cut.response_metadata["saffron"]
    assert meta["blocked"] and meta["verdicts"][0]["rule"] == "monitor-failed"
    assert clean.startswith(cut.content) and len(cut.content) < len(clean)


@pytest.mark.parametrize("mode", ["invoke", "stream", "astream"])
@pytest.mark.parametrize("fault", ["scm-nan", "callable-raises"])
def test_chat_saffron_fail_open_lets_the_text_through_with_a_warning(policy, tiny, fault, mode, caplog):
    clean = run_mode(chat(policy, None), mode)
    with caplog.at_level(logging.WARNING, logger="saffron_runtime.monitor"):
        got = run_mode(chat(policy, faulty(tiny, fault, fail_open=True)), mode)
    assert got == clean and clean
    assert any("failed open" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- the guard callback
def fake(text: str = BENIGN) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(text)]))


def callback_mode(mode: str, make_guard: Callable[[bool], Any]) -> str:
    if mode == "stream":
        return "".join(str(c.content) for c in fake().stream("q", config={"callbacks": [make_guard(False)]}))
    if mode == "invoke":
        return str(fake().invoke("q", config={"callbacks": [make_guard(False)]}).content)

    async def collect() -> str:
        return "".join([str(c.content) async for c in fake().astream("q", config={"callbacks": [make_guard(True)]})])

    return asyncio.run(collect())


@pytest.mark.parametrize("mode", ["stream", "invoke", "astream"])
@pytest.mark.parametrize("fault", FAULTS)
def test_guard_callback_stops_with_monitor_failed(tiny, fault, mode):
    guards: list[Any] = []

    def make(is_async: bool) -> Any:
        cls = AsyncSaffronGuardCallbackHandler if is_async else SaffronGuardCallbackHandler
        guards.append(cls(faulty(tiny, fault)))
        return guards[-1]

    with pytest.raises(GuardrailViolation) as e:
        callback_mode(mode, make)
    assert_failed(e.value.verdict, fault)
    [verdict] = guards[0].verdicts.values()
    assert verdict.rule == "monitor-failed"


@pytest.mark.parametrize("fault", ["scm-raises", "callable-nan"])
def test_guard_callback_fail_open_lets_the_text_through(tiny, fault, caplog):
    with caplog.at_level(logging.WARNING, logger="saffron_runtime.monitor"):
        got = callback_mode("stream", lambda _: SaffronGuardCallbackHandler(faulty(tiny, fault, fail_open=True)))
    assert got == BENIGN and any("failed open" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- the middleware
class ToolFake(GenericFakeChatModel):
    def bind_tools(self, tools: Any, **kwargs: Any) -> Any:
        return self


@pytest.mark.parametrize("fault", FAULTS)
def test_middleware_blocks_the_turn_with_monitor_failed(tiny, fault):
    guard = SaffronGuardrailMiddleware(faulty(tiny, fault), on_violation="refuse")
    out = create_agent(ToolFake(messages=iter([AIMessage(BENIGN)])), tools=[], middleware=[guard]).invoke(
        {"messages": [HumanMessage("q")]})
    last = out["messages"][-1]
    assert last.content == "I can't help with that." and last.response_metadata["saffron"]["blocked"]
    assert {v.rule for v in guard.verdicts} == {"monitor-failed"}
    assert_failed(guard.verdicts[0], fault)


def test_middleware_fail_open_keeps_the_answer(tiny, caplog):
    guard = SaffronGuardrailMiddleware(faulty(tiny, "scm-inf", fail_open=True), on_violation="refuse")
    with caplog.at_level(logging.WARNING, logger="saffron_runtime.monitor"):
        out = create_agent(ToolFake(messages=iter([AIMessage(BENIGN)])), tools=[], middleware=[guard]).invoke(
            {"messages": [HumanMessage("q")]})
    assert out["messages"][-1].content == BENIGN and not guard.verdicts
    assert any("failed open" in r.getMessage() for r in caplog.records)


# ---------------------------------------------------------------------- guard(model)
@pytest.mark.parametrize("mode", ["invoke", "stream", "astream"])
@pytest.mark.parametrize("fault", FAULTS)
def test_guard_model_stops_with_monitor_failed(tiny, fault, mode):
    from langchain_saffron import guard

    guarded = guard(fake(), faulty(tiny, fault))
    with pytest.raises(GuardrailViolation) as e:
        if mode == "invoke":
            guarded.invoke("q")
        elif mode == "stream":
            "".join(str(c.content) for c in guarded.stream("q"))
        else:

            async def collect() -> str:
                return "".join([str(c.content) async for c in guarded.astream("q")])

            asyncio.run(collect())
    assert_failed(e.value.verdict, fault)


def test_guard_model_fail_open_lets_the_text_through(tiny, caplog):
    from langchain_saffron import guard

    with caplog.at_level(logging.WARNING, logger="saffron_runtime.monitor"):
        out = guard(fake(), faulty(tiny, "callable-nan", fail_open=True)).invoke("q")
    assert out.content == BENIGN and any("failed open" in r.getMessage() for r in caplog.records)
