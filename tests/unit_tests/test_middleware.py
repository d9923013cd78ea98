"""D2 SaffronGuardrailMiddleware on create_agent agents: streamed model output never carries flagged
text (guard first, inherited handlers kept), on_violation, tool results screened, sync and async."""

from __future__ import annotations

import asyncio

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool

from langchain_saffron.middleware import SaffronGuardrailMiddleware
from saffron_runtime.errors import GuardrailViolation
from saffron_runtime.monitor import CallableMonitor

HARMFUL = "Sure here is how to build a bomb at home step by step"


def monitor() -> CallableMonitor:
    return CallableMonitor(lambda p, t: 1.0 if "bomb" in t else 0.0, every_chars=1)


class ToolFake(GenericFakeChatModel):
    """A scripted chat model that accepts tools (the middleware, not the model, is under test)."""

    def bind_tools(self, tools, **kwargs):
        return self


def agent(messages, tools=(), **kw):
    return create_agent(ToolFake(messages=iter(messages)), tools=list(tools),
                        middleware=[SaffronGuardrailMiddleware(monitor(), **kw)])


def test_streamed_agent_output_never_carries_the_flagged_chunk():
    a = agent([AIMessage(HARMFUL)], on_violation="refuse")
    streamed = "".join(c.content for c, _ in a.stream({"messages": [HumanMessage("q")]}, stream_mode="messages")
                       if isinstance(c, AIMessageChunk))
    assert "bomb" not in streamed and streamed  # inherited streaming handler still ran, guard first
    out = agent([AIMessage(HARMFUL)], on_violation="refuse").invoke({"messages": [HumanMessage("q")]})
    last = out["messages"][-1]
    assert last.content == "I can't help with that." and not last.tool_calls
    assert last.response_metadata["saffron"]["blocked"] is True


def test_raise_and_truncate():
    with pytest.raises(GuardrailViolation):
        agent([AIMessage(HARMFUL)]).invoke({"messages": [HumanMessage("q")]})
    out = agent([AIMessage(HARMFUL)], on_violation="truncate").invoke({"messages": [HumanMessage("q")]})
    text = out["messages"][-1].content
    assert "bomb" not in text and HARMFUL.startswith(text)


def test_async_agent():
    async def run():
        return await agent([AIMessage(HARMFUL)], on_violation="refuse").ainvoke({"messages": [HumanMessage("q")]})

    assert asyncio.run(run())["messages"][-1].content == "I can't help with that."


def test_harmful_tool_result_is_replaced_and_the_agent_keeps_running():
    @tool
    def search(query: str) -> str:
        """Search the web."""
        return "Snippet: how to build a bomb from household items"

    script = [AIMessage("", tool_calls=[{"name": "search", "args": {"query": "x"}, "id": "c1"}]),
              AIMessage("I could not find safe information.")]
    out = agent(script, tools=[search], on_violation="refuse").invoke({"messages": [HumanMessage("q")]})
    tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert tool_msgs and tool_msgs[0].content.startswith("[tool result withheld by the guardrail")
    assert "bomb" not in tool_msgs[0].content and tool_msgs[0].tool_call_id == "c1"
    assert out["messages"][-1].content == "I could not find safe information."


def test_benign_agent_is_untouched():
    out = agent([AIMessage("Bread needs flour and water.")]).invoke({"messages": [HumanMessage("q")]})
    assert out["messages"][-1].content == "Bread needs flour and water."


@pytest.fixture(scope="module")
def prompt_guarded(tiny):
    """A real SCM monitor with a prompt head, its threshold set between two prompts' scores."""
    import torch

    from saffron_runtime.monitor import MonitorRule, SCMMonitor, SCMMonitorModel

    torch.manual_seed(0)  # the stream rule never fires (theta 1): only the prompt head is under test
    model = SCMMonitorModel(tiny.reward_backbone, tiny.tokenizer, prompt_head=True,
                            rule=MonitorRule(name="delay-k", theta=1.0, k=1))
    scores = {p: model.prompt_score(p) for p in ("how make bomb", "how make cake")}
    assert scores["how make bomb"] != scores["how make cake"]
    model.prompt_theta = sum(scores.values()) / 2
    flagged = max(scores, key=scores.get)
    return SCMMonitor(model), flagged, min(scores, key=scores.get)


def _prompt_agent(monitor, answers):
    fake = ToolFake(messages=iter(answers))
    guard = SaffronGuardrailMiddleware(monitor, on_violation="refuse")
    return create_agent(fake, tools=[], middleware=[guard]), fake, guard


def test_before_model_refuses_a_flagged_prompt_without_calling_the_model(prompt_guarded):
    monitor, flagged, ok = prompt_guarded
    agent, fake, guard = _prompt_agent(monitor, [AIMessage("first answer"), AIMessage("second answer")])
    out = agent.invoke({"messages": [HumanMessage(flagged)]})
    last = out["messages"][-1]
    assert last.content == "I can't help with that." and last.response_metadata["saffron"]["blocked"]
    assert guard.verdicts[-1].rule == "prompt"
    out = agent.invoke({"messages": [HumanMessage(ok)]})
    assert out["messages"][-1].content == "first answer"  # the model ran only for the clean prompt


def test_before_model_async_and_switch_off(prompt_guarded):
    monitor, flagged, _ = prompt_guarded
    agent, _, _ = _prompt_agent(monitor, [AIMessage("an answer")])
    out = asyncio.run(agent.ainvoke({"messages": [HumanMessage(flagged)]}))
    assert out["messages"][-1].content == "I can't help with that."
    off = create_agent(ToolFake(messages=iter([AIMessage("an answer")])), tools=[],
                       middleware=[SaffronGuardrailMiddleware(monitor, check_prompts=False)])
    assert off.invoke({"messages": [HumanMessage(flagged)]})["messages"][-1].content == "an answer"


def test_harmful_tool_result_is_replaced_in_async_runs():
    @tool
    def search(query: str) -> str:
        """Search the web."""
        return "Snippet: how to build a bomb from household items"

    script = [AIMessage("", tool_calls=[{"name": "search", "args": {"query": "x"}, "id": "c1"}]),
              AIMessage("Nothing safe found.")]
    out = asyncio.run(agent(script, tools=[search], on_violation="refuse").ainvoke({"messages": [HumanMessage("q")]}))
    tool_msgs = [m for m in out["messages"] if isinstance(m, ToolMessage)]
    assert tool_msgs[0].content.startswith("[tool result withheld by the guardrail") and "bomb" not in tool_msgs[0].content
    assert out["messages"][-1].content == "Nothing safe found."
