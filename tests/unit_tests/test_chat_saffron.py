"""ChatSaffron on tiny random models: invoke/stream/astream, metadata, per-call settings, the
monitor gate in every streaming mode, on_violation, stop within one step, tools, errors."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import HumanMessage

from langchain_saffron.callbacks import SaffronGuardCallbackHandler
from langchain_saffron.chat_models import ChatSaffron
from saffron_runtime.errors import ConfigError, GuardrailViolation, PromptError
from saffron_runtime.guarded import GuardedGeneration
from saffron_runtime.models import LoadedModel, MRMTemplate, MultifurcationRewardModel
from saffron_runtime.monitor import CallableMonitor
from saffron_runtime.search import SearchConfig

LIMIT = 12  # the test monitor flags any response longer than this many characters


def flag_long(prompt: str, text: str) -> float:
    """A deterministic monitor for plumbing tests: harmful once the text passes LIMIT characters."""
    return 1.0 if len(text) > LIMIT else 0.0


@pytest.fixture(scope="module")
def parts(tiny):
    mrm = MultifurcationRewardModel(tiny.reward_backbone, tiny.tokenizer, MRMTemplate(prefix="<|im_start|>", separator="\n"))
    return LoadedModel(tiny.policy, tiny.tokenizer, "tiny-llama"), mrm


def chat(parts, **kw) -> ChatSaffron:
    policy, mrm = parts
    args: dict[str, Any] = {"policy": policy, "mrm": mrm, "max_tokens": 16, "budget": 3, "min_new_tokens": 16}
    return ChatSaffron(**{**args, **kw})


def test_invoke_stream_astream_agree_and_report(parts):
    model = chat(parts)
    msg = model.invoke("hello there")
    assert isinstance(msg.content, str) and msg.content
    assert msg.usage_metadata["output_tokens"] == 16 and msg.usage_metadata["input_tokens"] > 5
    meta = msg.response_metadata["saffron"]
    assert meta["blocked"] is False and meta["stats"]["method"] == "saffron"
    assert meta["stats"]["reward_forwards"] == meta["stats"]["expanded_nodes"]
    streamed = "".join(c.content for c in model.stream("hello there"))

    async def collect() -> str:
        return "".join([c.content async for c in model.astream("hello there")])

    assert streamed == msg.content == asyncio.run(collect())


def test_per_call_settings_via_bind(parts):
    model = chat(parts)
    meta = model.bind(method="greedy", max_new_tokens=5).invoke("hi").response_metadata["saffron"]
    assert meta["stats"]["method"] == "greedy" and meta["stats"]["steps"] == 5
    with pytest.raises(ConfigError, match=r"unknown setting\(s\) \['bugdet'\]"):
        model.invoke("hi", bugdet=3)
    with pytest.raises(ConfigError, match="SearchConfig.budget=0: must be >= 1"):
        model.invoke("hi", budget=0)


def test_generate_fires_token_callbacks_on_plain_invoke(parts):
    seen: list[str] = []

    class Collect(BaseCallbackHandler):
        def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
            seen.append(token)

    msg = chat(parts).invoke("hello", config={"callbacks": [Collect()]})
    assert seen and "".join(seen) == msg.content


def _violating(parts, **kw) -> ChatSaffron:
    return chat(parts, monitor=CallableMonitor(flag_long, every_chars=1), max_commit_lag=1, **kw)


def test_flagged_text_never_leaves_in_any_mode(parts):
    model = _violating(parts, on_violation="truncate")
    outs = {"stream": "".join(c.content for c in model.stream("go"))}

    async def astream() -> str:
        return "".join([c.content async for c in model.astream("go")])

    async def events() -> str:
        text = ""
        async for ev in model.astream_events("go", version="v2"):
            if ev["event"] == "on_chat_model_stream":
                text += ev["data"]["chunk"].content
        return text

    outs["astream"] = asyncio.run(astream())
    outs["astream_events"] = asyncio.run(events())
    outs["invoke"] = model.invoke("go").content
    for mode, text in outs.items():
        assert 0 < len(text) <= LIMIT, (mode, text)


def test_langgraph_messages_stream_never_carries_flagged_text(parts):
    from langgraph.graph import END, START, MessagesState, StateGraph

    model = _violating(parts, on_violation="truncate")
    graph = StateGraph(MessagesState)
    graph.add_node("model", lambda state: {"messages": [model.invoke(state["messages"])]})
    graph.add_edge(START, "model")
    graph.add_edge("model", END)
    app = graph.compile()
    text = ""
    for chunk, _meta in app.stream({"messages": [HumanMessage("go")]}, stream_mode="messages"):
        text += chunk.content if isinstance(chunk.content, str) else ""
    assert 0 < len(text) <= LIMIT


def test_on_violation_modes(parts):
    with pytest.raises(GuardrailViolation) as e:
        _violating(parts).invoke("go")
    assert e.value.verdict.rule == "callable-threshold"
    refused = _violating(parts, on_violation="refuse").invoke("go")
    assert refused.content == "I can't help with that." and refused.response_metadata["saffron"]["blocked"]
    cut = _violating(parts, on_violation="truncate").invoke("go")
    assert len(cut.content) <= LIMIT and cut.response_metadata["saffron"]["on_violation"] == "truncate"
    with pytest.raises(GuardrailViolation):
        list(_violating(parts).stream("go"))


def test_blocked_run_stops_computing_within_one_step(parts):
    model = _violating(parts)
    ids = model.engine.chat_prompt_ids("go")
    gen = GuardedGeneration(model.engine, model.streaming_monitor, ids, SearchConfig(budget=3, max_new_tokens=40, min_new_tokens=40, max_commit_lag=1),
                            prompt_text="go")
    list(gen)
    assert gen.outcome.blocked and gen.outcome.steps_after_verdict == 0
    assert gen.outcome.stats.steps < 40 and gen.stop_event.is_set()


def test_cancelling_astream_sets_the_stop_signal(parts):
    model = chat(parts, max_tokens=200, min_new_tokens=200, max_commit_lag=1)
    events: list[threading.Event] = []
    original = model._start

    def spy(*a, **k):
        gen, n, ov = original(*a, **k)
        events.append(gen.stop_event)
        return gen, n, ov

    object.__setattr__(model, "_start", spy)

    async def consume() -> None:
        async for _ in model.astream("go"):
            raise asyncio.CancelledError

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(consume())
    assert events and events[0].is_set()


def test_forced_tool_call_is_parsed(parts):
    from pydantic import BaseModel, Field

    class GetWeather(BaseModel):
        """Get the weather in a city."""

        city: str = Field(max_length=6)  # bounded, so a random model must close the string

    model = chat(parts, method="greedy", max_tokens=120, min_new_tokens=0).bind_tools([GetWeather], tool_choice="GetWeather")
    msg = model.invoke("weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "GetWeather" and "city" in msg.tool_calls[0]["args"]


def test_errors(parts):
    model = chat(parts)
    with pytest.raises(PromptError, match="the message list is empty"):
        model.invoke([])
    with pytest.raises(PromptError, match="more than the policy's context"):
        model.invoke("word " * 1100)
    with pytest.raises(ConfigError, match="method='saffron' needs a multifurcation reward model"):
        ChatSaffron(policy=parts[0], mrm=None)


def test_concurrent_calls_do_not_cross_talk(parts):
    model = chat(parts)
    prompts = ["alpha", "beta water", "gamma cake", "delta plan"]
    serial = {p: model.invoke(p).content for p in prompts}
    got: dict[str, str] = {}

    def work(p: str) -> None:
        got[p] = model.invoke(p).content

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == serial


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_by_constrained_decoding(parts, method):
    from pydantic import BaseModel, Field

    class Answer(BaseModel):
        """An answer."""

        word: str = Field(max_length=5)
        n: int = Field(ge=0, le=9)

    model = chat(parts, method="greedy", max_tokens=120, min_new_tokens=0)
    out = model.with_structured_output(Answer, method=method).invoke("give me a word and a digit")
    assert isinstance(out, Answer) and len(out.word) <= 5 and 0 <= out.n <= 9
    raw = model.with_structured_output(Answer, method=method, include_raw=True).invoke("again")
    assert raw["parsing_error"] is None and isinstance(raw["parsed"], Answer)


def test_streaming_monitor_is_the_monitor_it_checks_with_and_read_only(parts):
    watcher = CallableMonitor(flag_long, every_chars=1)
    model = chat(parts, monitor=watcher)
    assert model.streaming_monitor is watcher and chat(parts, monitor=None).streaming_monitor is None
    with pytest.raises((AttributeError, ValueError)):
        model.streaming_monitor = None


class _QuietGuard(SaffronGuardCallbackHandler):
    """The real guard, with its violation logged instead of raised: only its stop event can end the
    search, so the model must listen to it."""

    raise_error = False


@pytest.mark.parametrize("mode", ["invoke", "_stream", "_astream"])
def test_a_guard_callbacks_stop_event_ends_the_search(parts, mode):
    """``invoke`` hands ``_generate`` the run manager; LangChain's ``stream``/``astream`` do not pass
    one to ``_stream``/``_astream``, so those hooks are driven here with a real one."""
    from langchain_core.callbacks import AsyncCallbackManager, CallbackManager

    model = chat(parts, monitor=None, max_tokens=40, min_new_tokens=40, max_commit_lag=1)
    guard = _QuietGuard(CallableMonitor(flag_long, every_chars=1))
    messages = [HumanMessage("go")]
    if mode == "invoke":
        msg = model.invoke(messages, config={"callbacks": [guard]})
    elif mode == "_stream":
        [run] = CallbackManager.configure([guard]).on_chat_model_start({}, [messages])
        *_, last = model._stream(messages, run_manager=run)
        msg = last.message
    else:

        async def drive() -> Any:
            [run] = await AsyncCallbackManager.configure([guard]).on_chat_model_start({}, [messages])
            return [c async for c in model._astream(messages, run_manager=run)][-1].message

        msg = asyncio.run(drive())
    stats = msg.response_metadata["saffron"]["stats"]
    assert guard.verdicts, "the guard's monitor fired"
    assert stats["stopped"] and stats["stop_reason"] == "stop event set"
    assert stats["steps"] < 40  # it stopped growing once the guard fired


def test_a_raising_guard_stops_the_search_too(parts):
    model = chat(parts, monitor=None, max_tokens=40, min_new_tokens=40, max_commit_lag=1)
    with pytest.raises(GuardrailViolation):
        model.invoke("go", config={"callbacks": [SaffronGuardCallbackHandler(CallableMonitor(flag_long, every_chars=1))]})


@pytest.mark.parametrize("method", ["saffron", "greedy"])
def test_a_stop_arriving_mid_step_ends_the_search_after_that_step(parts, tiny, monkeypatch, method):
    """The stop is set from inside the policy's forward (mid-step, as a consumer thread could at any
    moment): the step in flight finishes, and no policy forward of a later step runs."""
    model = chat(parts, monitor=None, method=method, max_tokens=40, min_new_tokens=40)
    ids = model.engine.chat_prompt_ids("go")
    cfg = SearchConfig(method=method, budget=3, max_new_tokens=40, min_new_tokens=40)
    calls: list[int] = []
    real = tiny.policy.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny.policy, "forward", counting)
    free = GuardedGeneration(model.engine, None, ids, cfg, prompt_text="go")
    list(free)
    per_step = len(calls) / free.outcome.stats.steps  # policy forwards one step costs
    calls.clear()
    stop = threading.Event()

    def stopping(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 6:
            stop.set()  # arrives while this forward (step) is running
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny.policy, "forward", stopping)
    gen = GuardedGeneration(model.engine, None, ids, cfg, prompt_text="go", stop_event=stop)
    list(gen)
    assert stop.is_set() and gen.outcome.stats.stopped
    assert len(calls) - 6 <= per_step, (len(calls), per_step)  # at most the rest of the step in flight
    assert gen.outcome.stats.steps < free.outcome.stats.steps
