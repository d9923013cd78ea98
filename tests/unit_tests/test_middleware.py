"""SaffronGuardrailMiddleware on create_agent agents: streamed model output never carries flagged
text (guard first, inherited handlers kept), on_violation, tool results screened, sync and async."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from langchain.agents import create_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGenerationChunk
from langchain_core.tools import tool

from langchain_saffron.chat_models import ChatSaffron
from langchain_saffron.middleware import SaffronGuardrailMiddleware
from saffron_runtime.errors import GuardrailViolation
from saffron_runtime.models import LoadedModel
from saffron_runtime.monitor import CallableMonitor, MonitorRule, SCMMonitor, SCMMonitorModel

HARMFUL = "Sure here is how to build a bomb at home step by step"


def monitor() -> CallableMonitor:
    return CallableMonitor(lambda p, t: 1.0 if "bomb" in t else 0.0, every_chars=1)


class ToolFake(GenericFakeChatModel):
    """A scripted chat model that accepts tools and streams them (GenericFakeChatModel's stream drops
    tool calls): words, then one chunk with the tool calls."""

    def bind_tools(self, tools, **kwargs):
        return self

    def _stream(self, messages, stop=None, run_manager=None, **kwargs):
        message = self._generate(messages, stop=stop, **kwargs).generations[0].message
        for word in re.split(r"(\s)", message.content) if message.content else []:
            yield ChatGenerationChunk(message=AIMessageChunk(content=word))
        calls = [{"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                 for i, c in enumerate(message.tool_calls)]
        yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=calls))


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


# ---------------------------------------------------------------------- one monitor per stack
class Counted:
    """Counts the monitor's judging passes (sessions opened) and its backbone forwards."""

    def __init__(self, monkeypatch, monitor):
        self.sessions = self.forwards = 0
        body = monitor.model.backbone.model  # SCMMonitorModel.hidden_states runs the backbone body
        forward, open_ = body.forward, monitor.open

        def counting_forward(*a, **k):
            self.forwards += 1
            return forward(*a, **k)

        def counting_open(prompt):
            self.sessions += 1
            return open_(prompt)

        monkeypatch.setattr(body, "forward", counting_forward)
        monkeypatch.setattr(monitor, "open", counting_open)


def _self_guarded(tiny, theta: float, **kw):
    """ChatSaffron on the tiny policy, guarded by a real SCM monitor on the tiny reward backbone."""
    rule = MonitorRule(name="delay-k", theta=theta, k=1)  # theta 1: never fires; 0: fires at once
    monitor = SCMMonitor(SCMMonitorModel(tiny.reward_backbone, tiny.tokenizer, rule=rule))
    policy = LoadedModel(tiny.policy, tiny.tokenizer, "tiny-llama")
    model = ChatSaffron(policy=policy, mrm=None, method="greedy", monitor=monitor,
                        max_tokens=12, min_new_tokens=12, **kw)
    assert model.streaming_monitor is monitor
    return model, monitor


def test_self_guarded_model_is_judged_once_under_the_middleware(tiny, monkeypatch):
    model, monitor = _self_guarded(tiny, theta=1.0)
    count = Counted(monkeypatch, monitor)
    alone = model.invoke([HumanMessage("tell me a story")])
    assert alone.content and (count.sessions, count.forwards) != (0, 0)
    one_pass = (count.sessions, count.forwards)

    def run(**kw):
        count.sessions = count.forwards = 0
        guard = SaffronGuardrailMiddleware(monitor, **kw)
        out = create_agent(model, tools=[], middleware=[guard]).invoke(
            {"messages": [HumanMessage("tell me a story")]})
        assert out["messages"][-1].content == alone.content and not guard.verdicts
        return count.sessions, count.forwards

    assert run() == one_pass  # the model's own monitor judged it; the middleware added nothing
    sessions, forwards = run(trust_model_monitor=False)  # the old stack: model, callback, final check
    assert sessions == 3 and forwards > 2 * one_pass[1]


def test_self_guarded_model_block_is_taken_from_its_metadata(tiny, monkeypatch):
    model, monitor = _self_guarded(tiny, theta=0.0, on_violation="refuse")
    count = Counted(monkeypatch, monitor)
    guard = SaffronGuardrailMiddleware(monitor, on_violation="refuse")
    out = create_agent(model, tools=[], middleware=[guard]).invoke({"messages": [HumanMessage("q")]})
    last = out["messages"][-1]
    assert last.content == "I can't help with that." and last.response_metadata["saffron"]["blocked"]
    assert count.sessions == 1 and guard.verdicts and guard.verdicts[0].rule == "delay-k"
    assert last.response_metadata["saffron"]["verdicts"][0]["rule"] == "delay-k"
    # the middleware's on_violation decides the turn, whatever the model's was
    strict = create_agent(model, tools=[], middleware=[SaffronGuardrailMiddleware(monitor)])
    with pytest.raises(GuardrailViolation) as e:
        strict.invoke({"messages": [HumanMessage("q")]})
    assert e.value.verdict.rule == "delay-k"


def test_self_guarded_truncation_keeps_the_text_the_model_cleared(tiny):
    monitor = CallableMonitor(lambda p, t: float(len(t) > 8), every_chars=1)  # fires past 8 chars
    model = ChatSaffron(policy=LoadedModel(tiny.policy, tiny.tokenizer, "tiny-llama"), mrm=None,
                        method="greedy", monitor=monitor, on_violation="truncate",
                        max_tokens=12, min_new_tokens=12)
    cleared = model.invoke([HumanMessage("q")]).content
    assert cleared and len(cleared) <= 8
    guard = SaffronGuardrailMiddleware(monitor, on_violation="truncate")
    out = create_agent(model, tools=[], middleware=[guard]).invoke({"messages": [HumanMessage("q")]})
    last = out["messages"][-1]
    assert last.content == cleared and last.response_metadata["saffron"]["on_violation"] == "truncate"
    assert guard.verdicts[0].rule == "callable-threshold"


def test_async_self_guarded_model_is_judged_once(tiny, monkeypatch):
    model, monitor = _self_guarded(tiny, theta=1.0)
    count = Counted(monkeypatch, monitor)
    agent = create_agent(model, tools=[], middleware=[SaffronGuardrailMiddleware(monitor)])
    out = asyncio.run(agent.ainvoke({"messages": [HumanMessage("tell me a story")]}))
    assert out["messages"][-1].content and count.sessions == 1


class BrokenMonitor:
    """A monitor whose scorer crashes on every text it is given."""

    def open(self, prompt):
        class Session:
            verdict = None

            def feed_text(self, text):
                raise RuntimeError("monitor offline")

            finish = release = lambda self: None

        return Session()


def test_a_failing_monitor_blocks_model_turns_and_tool_results():
    @tool
    def search(query: str) -> str:
        """Search the web."""
        return "Snippet: flour and water"

    script = [AIMessage("", tool_calls=[{"name": "search", "args": {"query": "x"}, "id": "c1"}]),
              AIMessage("Bread needs flour.")]
    guard = SaffronGuardrailMiddleware(BrokenMonitor(), on_violation="refuse")
    out = create_agent(ToolFake(messages=iter(script)), tools=[search], middleware=[guard]).invoke(
        {"messages": [HumanMessage("q")]})
    tool_msg = next(m for m in out["messages"] if isinstance(m, ToolMessage))
    # the call itself is judged first now: the failing monitor blocks it before the tool runs
    assert tool_msg.content.startswith("[tool call blocked by the guardrail") and "monitor offline" in tool_msg.content
    assert tool_msg.response_metadata["saffron"]["verdicts"][0]["monitor_failed"] is True
    assert out["messages"][-1].content == "I can't help with that."
    assert {v.rule for v in guard.verdicts} == {"monitor-failed"}
