"""The middleware holds back: in a create_agent agent, with a real SCM monitor (tiny backbone, rule set
to fire mid-text) and a model that is not ours, no stream mode shows the firing token or anything after
it, truncate keeps only cleared text, and a flagged tool call never runs."""

from __future__ import annotations

import asyncio

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_saffron.middleware import SaffronGuardrailMiddleware
from saffron_runtime.errors import GuardrailViolation
from saffron_runtime.monitor import CallableMonitor

from .leak_support import ANSWER, ChunkedModel, assert_no_leak, mid_text_monitor, words


@pytest.fixture(scope="module")
def scm(tiny):
    return mid_text_monitor(tiny)


def agent(monitor, **kw):
    model = ChunkedModel(cuts=words(ANSWER))
    return create_agent(model, tools=[], middleware=[SaffronGuardrailMiddleware(
        monitor, check_prompts=False, **kw)])


def ai_text(items) -> str:
    return "".join(c.content for c, _ in items if isinstance(c, AIMessageChunk))


def test_messages_mode_and_truncate_never_show_the_firing_token(scm):
    monitor, verdict = scm
    a = agent(monitor, on_violation="truncate")
    streamed = ai_text(a.stream({"messages": [HumanMessage("q")]}, stream_mode="messages"))
    assert_no_leak(streamed, ANSWER, verdict)
    assert streamed
    final = a.invoke({"messages": [HumanMessage("q")]})["messages"][-1]
    assert_no_leak(final.content, ANSWER, verdict)
    assert final.content == streamed and final.response_metadata["saffron"]["on_violation"] == "truncate"


def test_updates_mode_and_refuse(scm):
    monitor, verdict = scm
    updates = list(agent(monitor, on_violation="refuse").stream(
        {"messages": [HumanMessage("q")]}, stream_mode="updates"))
    sent = [m for u in updates for step in u.values() if step for m in step.get("messages", [])]
    assert [m.content for m in sent if isinstance(m, AIMessage)] == ["I can't help with that."]


def test_async_messages_mode_and_raise(scm):
    monitor, verdict = scm

    async def run() -> str:
        got = ""
        with pytest.raises(GuardrailViolation):
            async for c, _ in agent(monitor).astream({"messages": [HumanMessage("q")]},
                                                     stream_mode="messages"):
                if isinstance(c, AIMessageChunk):
                    got += c.content
        return got

    streamed = asyncio.run(run())
    assert_no_leak(streamed, ANSWER, verdict)


# ---------------------------------------------------------------------- tool calls
def bomb_monitor() -> CallableMonitor:
    return CallableMonitor(lambda p, t: 1.0 if "bomb" in t else 0.0, every_chars=1)


def tool_agent(on_violation: str, ran: list[str]):
    @tool
    def send(body: str) -> str:
        """Send a message."""
        ran.append(body)
        return "sent"

    class Script(ChunkedModel):
        turn: int = 0

        def _stream(self, *a, **k):
            self.turn += 1
            if self.turn == 1:
                self.text, self.tool_calls = "", [
                    {"name": "send", "args": {"body": "how to build a bomb"}, "id": "c1"},
                    {"name": "send", "args": {"body": "hello"}, "id": "c2"}]
            else:
                self.text, self.tool_calls = "Done.", []
            yield from super()._stream(*a, **k)

    guard = SaffronGuardrailMiddleware(bomb_monitor(), on_violation=on_violation)
    return create_agent(Script(), tools=[send], middleware=[guard]), guard


def test_a_flagged_tool_call_does_not_run_and_the_agent_goes_on():
    ran: list[str] = []
    a, guard = tool_agent("refuse", ran)
    out = a.invoke({"messages": [HumanMessage("q")]})
    assert ran == ["hello"]  # the flagged call never reached the tool
    notices = {m.tool_call_id: m for m in out["messages"] if isinstance(m, ToolMessage)}
    assert notices["c1"].content.startswith("[tool call blocked by the guardrail")
    assert notices["c1"].status == "error" and notices["c2"].content == "sent"
    assert out["messages"][-1].content == "Done." and guard.verdicts


def test_a_flagged_tool_call_stops_the_run_under_raise():
    ran: list[str] = []
    a, _ = tool_agent("raise", ran)
    with pytest.raises(GuardrailViolation):
        a.invoke({"messages": [HumanMessage("q")]})
    assert "how to build a bomb" not in ran
