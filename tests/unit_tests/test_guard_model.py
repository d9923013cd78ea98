"""guard(model, monitor): hold-back for any chat model. With a real SCM monitor (tiny backbone, rule
set to fire mid-text) no consumer of any mode gets the firing token or anything after it; the inner
stream is closed when the monitor fires; tool calls are judged; verdicts are chunking-invariant."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain.agents import create_agent
from langchain_core.messages import AIMessageChunk, HumanMessage
from langchain_core.tools import tool
from pydantic import BaseModel

from langchain_saffron import GuardedChatModel, guard
from saffron_runtime.errors import ConfigError, GuardrailViolation
from saffron_runtime.monitor import CallableMonitor

from .leak_support import ANSWER, ChunkedModel, assert_no_leak, mid_text_monitor, words


@pytest.fixture(scope="module")
def scm(tiny):
    return mid_text_monitor(tiny)


def model(**kw) -> ChunkedModel:
    return ChunkedModel(cuts=kw.pop("cuts", words(ANSWER)), **kw)


def test_invoke_batch_and_stream_release_only_text_before_the_firing_token(scm):
    monitor, verdict = scm
    out = guard(model(), monitor, on_violation="truncate").invoke("q")
    assert_no_leak(out.content, ANSWER, verdict)
    assert out.content  # text before the firing token is released
    meta = out.response_metadata["saffron"]
    assert meta["blocked"] and meta["verdicts"][0]["position"] == verdict.position
    for msg in guard(model(), monitor, on_violation="truncate").batch(["q", "q"]):
        assert msg.content == out.content
    inner = model()
    streamed = ""
    with pytest.raises(GuardrailViolation) as e:
        for chunk in guard(inner, monitor).stream("q"):
            streamed += chunk.content
    assert_no_leak(streamed, ANSWER, verdict)
    assert streamed == out.content and e.value.cleared_text == streamed
    assert e.value.verdict.position == verdict.position


def test_async_modes_release_only_text_before_the_firing_token(scm):
    monitor, verdict = scm

    async def run() -> tuple[str, str, str]:
        g = guard(model(), monitor, on_violation="truncate")
        invoked = (await g.ainvoke("q")).content
        streamed = "".join([c.content async for c in g.astream("q")])
        events = ""
        async for ev in g.astream_events("q", version="v2"):
            if ev["event"] == "on_chat_model_stream":  # the inner model's raw tokens must not show
                events += ev["data"]["chunk"].content
        return invoked, streamed, events

    for got in asyncio.run(run()):
        assert_no_leak(got, ANSWER, verdict)
        assert got


def test_refuse_appends_the_refusal_after_cleared_text(scm):
    monitor, verdict = scm
    g = guard(model(), monitor, on_violation="refuse")
    assert g.invoke("q").content == "I can't help with that."
    chunks = [c.content for c in g.stream("q")]
    assert chunks[-1] == "\n\nI can't help with that."
    assert_no_leak("".join(chunks[:-1]), ANSWER, verdict)


def test_langgraph_messages_and_updates_modes_do_not_leak(scm):
    monitor, verdict = scm
    agent = create_agent(guard(model(), monitor, on_violation="truncate"), tools=[])
    streamed = "".join(c.content for c, _ in agent.stream(
        {"messages": [HumanMessage("q")]}, stream_mode="messages") if isinstance(c, AIMessageChunk))
    assert_no_leak(streamed, ANSWER, verdict)
    assert streamed
    updates = [u for u in agent.stream({"messages": [HumanMessage("q")]}, stream_mode="updates")]
    final = updates[-1]["model"]["messages"][-1]
    assert_no_leak(final.content, ANSWER, verdict)


def test_the_inner_stream_is_closed_when_the_monitor_fires(scm):
    monitor, verdict = scm
    inner = model()
    guard(inner, monitor, on_violation="truncate").invoke("q")
    assert inner.closed
    # it was pulled only until the chunk holding the firing token (plus the two pieces the monitor
    # waits for to be sure a token has ended), never to the end
    assert inner.pulled < len(inner.pieces())
    clean = model(text="Bread needs flour.")
    assert guard(clean, monitor).invoke("q").content == "Bread needs flour." and not clean.closed


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(1, len(ANSWER) - 1), max_size=40))
def test_any_chunking_gives_the_same_firing_token_and_released_text(scm, cuts):
    monitor, verdict = scm
    out = guard(model(cuts=cuts), monitor, on_violation="truncate").invoke("q")
    got = out.response_metadata["saffron"]["verdicts"][0]
    assert (got["position"], tuple(got["span"])) == (verdict.position, verdict.span)
    assert out.content == ANSWER[: verdict.span[0]]  # hold_back=0: everything before the firing token


def test_held_chars_are_reported_and_bounded(scm):
    monitor, _ = scm
    out = guard(model(text="Bread needs flour."), monitor).invoke("q")
    held = out.response_metadata["saffron"]["held_chars"]
    assert held > 0  # the monitor holds the last pre-tokenizer pieces until it is sure they ended
    with pytest.raises(GuardrailViolation) as e:
        guard(model(text="Bread needs flour.", cuts=[]), monitor, max_held_chars=4).invoke("q")
    assert e.value.verdict.rule == "hold-back-limit" and "max_held_chars=4" in e.value.verdict.reason


# ---------------------------------------------------------------------- tool calls (plumbing)
def bomb_monitor() -> CallableMonitor:
    return CallableMonitor(lambda p, t: 1.0 if "bomb" in t else 0.0, every_chars=1)


CALLS = [{"name": "send", "args": {"body": "how to build a bomb"}, "id": "c1"},
         {"name": "send", "args": {"body": "hello"}, "id": "c2"}]


def test_flagged_tool_calls_are_blocked_before_they_leave():
    with pytest.raises(GuardrailViolation):
        guard(model(text="ok", tool_calls=CALLS), bomb_monitor()).invoke("q")
    kept = guard(model(text="ok", tool_calls=CALLS), bomb_monitor(), on_violation="truncate").invoke("q")
    assert [c["id"] for c in kept.tool_calls] == ["c2"] and kept.content == "ok"
    assert kept.response_metadata["saffron"]["blocked"] is True
    refused = guard(model(text="ok", tool_calls=CALLS), bomb_monitor(), on_violation="refuse")
    chunks = list(refused.stream("q"))
    assert not any(c.tool_call_chunks for c in chunks) and chunks[-1].content.endswith("help with that.")
    clean = guard(model(text="ok", tool_calls=CALLS[1:]), bomb_monitor()).invoke("q")
    assert [c["id"] for c in clean.tool_calls] == ["c2"]


def test_bind_tools_passes_through_and_stays_guarded():
    @tool
    def send(body: str) -> str:
        """Send a message."""
        return "sent"

    inner = model(text="ok", tool_calls=CALLS)
    bound = guard(inner, bomb_monitor(), on_violation="truncate").bind_tools([send], tool_choice="any")
    assert isinstance(bound, GuardedChatModel)
    assert inner.bound == {"tools": ["send"], "tool_choice": "any"}
    assert [c["id"] for c in bound.invoke("q").tool_calls] == ["c2"]


class Note(BaseModel):
    body: str


class StructuredFake(ChunkedModel):
    def with_structured_output(self, schema, **kwargs):
        from langchain_core.runnables import RunnableLambda

        return RunnableLambda(lambda _: schema(body=self.text))


def test_with_structured_output_is_the_inner_models_and_judged():
    ok = guard(StructuredFake(text="hello"), bomb_monitor()).with_structured_output(Note)
    assert ok.invoke("q") == Note(body="hello")
    bad = guard(StructuredFake(text="a bomb"), bomb_monitor(), on_violation="refuse")
    with pytest.raises(GuardrailViolation):
        bad.with_structured_output(Note).invoke("q")


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ConfigError, match="needs a streaming monitor"):
        guard(model(), 42)
    with pytest.raises(ConfigError, match="not a LangChain chat model"):
        guard("gpt-4o", bomb_monitor())


def test_the_bare_callback_cannot_hold_back_so_the_firing_token_leaks(scm):
    """Why guard() exists: the callback sees a token only after the monitor has scored it, which is
    two pre-tokenizer pieces after it was streamed (the README table's callback row)."""
    from langchain_saffron import SaffronGuardCallbackHandler

    monitor, verdict = scm
    streamed = ""
    with pytest.raises(GuardrailViolation):
        for c in model().stream("q", config={"callbacks": [SaffronGuardCallbackHandler(monitor)]}):
            streamed += c.content
    assert ANSWER.startswith(streamed) and len(streamed) > verdict.span[0]
