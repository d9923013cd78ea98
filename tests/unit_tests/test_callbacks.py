"""Guard callback: no chunk after the firing token reaches the consumer, in every streaming mode,
sync and async; the producer stops; wrong attachment leaks (so the docs' warning stays true)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult

from langchain_saffron.callbacks import (
    AsyncSaffronGuardCallbackHandler,
    SaffronGuardCallbackHandler,
)
from saffron_runtime.errors import GuardrailViolation
from saffron_runtime.monitor import CallableMonitor

HARMFUL = "Sure here is how to build a bomb at home step by step"
BENIGN = "Sure here is how to bake a cake at home step by step"


def monitor() -> CallableMonitor:
    """Deterministic: the plumbing is under test, not a model's judgement."""
    return CallableMonitor(lambda p, t: 1.0 if "bomb" in t else 0.0, every_chars=1)


def fake(text: str) -> GenericFakeChatModel:
    return GenericFakeChatModel(messages=iter([AIMessage(text)]))


def before_bomb(text: str) -> str:
    return text[: text.index("bomb")]


def test_stream_stops_at_the_firing_token():
    got = []
    guard = SaffronGuardCallbackHandler(monitor())
    with pytest.raises(GuardrailViolation) as e:
        for chunk in fake(HARMFUL).stream("q", config={"callbacks": [guard]}):
            got.append(chunk.content)
    text = "".join(got)
    assert "bomb" not in text and before_bomb(HARMFUL).startswith(text) and text
    assert e.value.verdict.rule == "callable-threshold"
    ok = "".join(
        c.content
        for c in fake(BENIGN).stream(
            "q", config={"callbacks": [SaffronGuardCallbackHandler(monitor())]}
        )
    )
    assert ok == BENIGN


def test_astream_and_astream_events_stop_at_the_firing_token():
    async def run_astream() -> str:
        got = ""
        guard = AsyncSaffronGuardCallbackHandler(monitor())
        with pytest.raises(GuardrailViolation):
            async for c in fake(HARMFUL).astream("q", config={"callbacks": [guard]}):
                got += c.content
        return got

    async def run_events() -> str:
        got = ""
        guard = AsyncSaffronGuardCallbackHandler(monitor())
        with pytest.raises(GuardrailViolation):
            async for ev in fake(HARMFUL).astream_events(
                "q", version="v2", config={"callbacks": [guard]}
            ):
                if ev["event"] == "on_chat_model_stream":
                    got += ev["data"]["chunk"].content
        return got

    for text in (asyncio.run(run_astream()), asyncio.run(run_events())):
        assert text and "bomb" not in text


def _graph(model: BaseChatModel):
    from langgraph.graph import END, START, MessagesState, StateGraph

    g = StateGraph(MessagesState)
    g.add_node("model", lambda s, config: {"messages": [model.invoke(s["messages"], config)]})
    g.add_edge(START, "model")
    g.add_edge("model", END)
    return g.compile()


def test_langgraph_messages_mode_config_attachment_does_not_leak():
    guard = SaffronGuardCallbackHandler(monitor())
    got = ""
    with pytest.raises(GuardrailViolation):
        for chunk, _ in _graph(fake(HARMFUL)).stream(
            {"messages": [HumanMessage("q")]}, {"callbacks": [guard]}, stream_mode="messages"
        ):
            got += chunk.content
    assert got and "bomb" not in got


def test_constructor_attachment_leaks_the_firing_chunk():
    """The wrong way: the guard runs after LangGraph's streaming handler, so 'bomb' gets out."""
    model = GenericFakeChatModel(
        messages=iter([AIMessage(HARMFUL)]), callbacks=[SaffronGuardCallbackHandler(monitor())]
    )
    got = ""
    with pytest.raises(GuardrailViolation):
        for chunk, _ in _graph(model).stream(
            {"messages": [HumanMessage("q")]}, stream_mode="messages"
        ):
            got += chunk.content
    assert "bomb" in got


class LocalHFChat(BaseChatModel):
    """A minimal local model streaming from a background generation thread that obeys the guard's stop signal."""

    hf: Any
    tokenizer: Any
    max_tokens: int = 200
    produced: list[int] = []

    @property
    def _llm_type(self) -> str:
        return "local-hf-test"

    def _generate(self, messages, stop=None, run_manager=None, **kw) -> ChatResult:
        raise NotImplementedError

    def _stream(
        self, messages: list[BaseMessage], stop=None, run_manager=None, **kw
    ) -> Iterator[ChatGenerationChunk]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        # langchain-core's stream() fires the callbacks and does not hand _stream a run manager: when the
        # guard raises, this generator is closed, and the finally below sets the stop signal the
        # generation thread's StoppingCriteria watches (HuggingFacePipeline lacks this and keeps going).
        stop_event = threading.Event()

        class OnStop(StoppingCriteria):
            def __call__(self, input_ids, scores, **k):
                return stop_event.is_set()

        ids = self.tokenizer("make a bomb", return_tensors="pt")
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True)
        bomb = self.tokenizer(" bomb", add_special_tokens=False)[
            "input_ids"
        ]  # words flush the streamer
        bias = torch.zeros(len(self.tokenizer))
        bias[bomb] = 30.0  # after a few tokens the model keeps saying "bomb"

        def boost(input_ids, scores):
            return scores + bias if input_ids.shape[1] > ids["input_ids"].shape[1] + 3 else scores

        def work() -> None:
            out = self.hf.generate(
                **ids,
                max_new_tokens=self.max_tokens,
                do_sample=False,
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([OnStop()]),
                logits_processor=[boost],
                pad_token_id=self.tokenizer.pad_token_id,
            )
            self.produced.append(out.shape[1] - ids["input_ids"].shape[1])

        thread = threading.Thread(target=work)
        thread.start()
        try:
            for text in streamer:
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=text))
                if run_manager is not None:
                    run_manager.on_llm_new_token(text, chunk=chunk)
                yield chunk
        finally:
            stop_event.set()  # consumer gone: make sure the thread ends too
            thread.join(timeout=30)


def test_local_model_stops_computing(tiny):
    model = LocalHFChat(hf=tiny.policy, tokenizer=tiny.tokenizer, produced=[])
    guard = SaffronGuardCallbackHandler(monitor())
    got = ""
    with pytest.raises(GuardrailViolation):
        for c in model.stream("q", config={"callbacks": [guard]}):
            got += c.content
    assert "bomb" not in got
    assert model.produced and model.produced[0] < 40  # far below max_tokens=200: generation stopped


def test_non_streamed_output_gets_the_backstop():
    guard = SaffronGuardCallbackHandler(monitor())
    with pytest.raises(GuardrailViolation):
        fake(HARMFUL).invoke("q", config={"callbacks": [guard]})
    assert (
        fake(BENIGN)
        .invoke("q", config={"callbacks": [SaffronGuardCallbackHandler(monitor())]})
        .content
        == BENIGN
    )


def test_sixteen_concurrent_runs_get_their_own_verdicts():
    guard = SaffronGuardCallbackHandler(monitor())
    texts = [HARMFUL if i % 2 else BENIGN for i in range(16)]
    results: dict[int, str] = {}

    def work(i: int) -> None:
        out = ""
        try:
            for c in fake(texts[i]).stream("q", config={"callbacks": [guard]}):
                out += c.content
            results[i] = "ok:" + out
        except GuardrailViolation as e:
            results[i] = f"blocked:{e.verdict.text}:{out}"

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, text in enumerate(texts):
        if text is BENIGN:
            assert results[i] == "ok:" + BENIGN
        else:
            assert results[i].startswith("blocked:") and "bomb" not in results[i].split(":", 2)[2]
    assert len(guard.verdicts) == 8 and not guard._runs


def test_langgraph_messages_mode_async():
    from langgraph.graph import END, START, MessagesState, StateGraph

    model = fake(HARMFUL)

    async def node(s, config):
        return {"messages": [await model.ainvoke(s["messages"], config)]}

    g = StateGraph(MessagesState)
    g.add_node("model", node)
    g.add_edge(START, "model")
    g.add_edge("model", END)
    app = g.compile()

    async def run() -> str:
        guard = AsyncSaffronGuardCallbackHandler(monitor())
        got = ""
        with pytest.raises(GuardrailViolation):
            async for chunk, _ in app.astream({"messages": [HumanMessage("q")]},
                                                                {"callbacks": [guard]}, stream_mode="messages"):
                got += chunk.content
        return got

    text = asyncio.run(run())
    assert text and "bomb" not in text


def test_stop_event_is_set_for_the_firing_run_only():
    from uuid import uuid4

    guard = SaffronGuardCallbackHandler(monitor())
    harmful, benign = uuid4(), uuid4()
    for run in (harmful, benign):
        guard.on_chat_model_start({}, [[HumanMessage("q")]], run_id=run)
    stop_harmful, stop_benign = guard.stop_event(harmful), guard.stop_event(benign)
    assert guard.stop_event(harmful) is stop_harmful  # one event for the run's lifetime
    guard.on_llm_new_token("Sure, a cake.", run_id=benign)
    assert not stop_harmful.is_set() and not stop_benign.is_set()
    with pytest.raises(GuardrailViolation):
        guard.on_llm_new_token("Sure, a bomb.", run_id=harmful)
    assert stop_harmful.is_set() and not stop_benign.is_set()
    guard.on_llm_new_token(" And icing.", run_id=benign)  # the other run goes on
    assert not stop_benign.is_set() and not guard.stop_event(uuid4()).is_set()


class ThreadedChat(BaseChatModel):
    """A local model whose generation runs in a worker thread, as HF ``generate`` with a streamer
    does: ``_generate`` hands the worker the guard's stop event of its run (``run_manager.run_id``)
    and forwards each word to the callbacks. The worker polls the event before every word, so when
    the guard fires in the consumer the worker stops too; it records how many words it made."""

    guard: Any = None
    words: list[str] = []
    produced: list[int] = []

    @property
    def _llm_type(self) -> str:
        return "threaded-test"

    def _generate(self, messages, stop=None, run_manager=None, **kw) -> ChatResult:
        import queue

        from langchain_core.outputs import ChatGeneration

        stop_event = self.guard.stop_event(run_manager.run_id)
        out: queue.Queue[str | None] = queue.Queue(maxsize=1)  # the worker runs one word ahead

        def offer(item: str | None) -> bool:
            """Hand ``item`` to the consumer; give up once the stop event is set."""
            while not stop_event.is_set():
                try:
                    out.put(item, timeout=0.05)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            made = 0
            for word in self.words:
                if not offer(word):
                    break
                made += 1
            self.produced.append(made)
            offer(None)

        thread = threading.Thread(target=produce, daemon=True)
        thread.start()
        text = ""
        try:
            while (word := out.get(timeout=30)) is not None:
                text += word
                run_manager.on_llm_new_token(word)  # the guard raises here when it fires
        finally:
            thread.join(timeout=30)
        return ChatResult(generations=[ChatGeneration(message=AIMessage(text))])


def test_a_worker_polling_the_stop_event_stops_computing():
    guard = SaffronGuardCallbackHandler(monitor())
    words = [w + " " for w in HARMFUL.split()]
    model = ThreadedChat(guard=guard, words=words, produced=[])
    with pytest.raises(GuardrailViolation):
        model.invoke("q", config={"callbacks": [guard]})
    fired_at = next(i for i, w in enumerate(words) if "bomb" in w)
    assert model.produced and model.produced[0] <= fired_at + 2 < len(words)
    benign = ThreadedChat(guard=guard, words=[w + " " for w in BENIGN.split()], produced=[])
    assert benign.invoke("q", config={"callbacks": [guard]}).content.strip() == BENIGN.strip()
    assert benign.produced == [len(BENIGN.split())]


def test_a_monitor_failing_mid_stream_fails_closed():
    class Flaky:
        def open(self, prompt):
            inner = monitor().open(prompt)

            class Session:
                verdict = None

                def feed_text(self, text):
                    if "home" in text:
                        raise RuntimeError("monitor offline")
                    return inner.feed_text(text)

                def finish(self):
                    return inner.finish()

            return Session()

    guard = SaffronGuardCallbackHandler(Flaky())
    got = ""
    with pytest.raises(GuardrailViolation) as e:
        for c in fake(BENIGN).stream("q", config={"callbacks": [guard]}):
            got += c.content
    assert e.value.verdict.monitor_failed and "monitor offline" in e.value.verdict.reason
    assert got and BENIGN.startswith(got) and "home" not in got
