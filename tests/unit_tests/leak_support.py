"""Shared by the leak tests: a chat model that streams a text in a chosen chunking (the "any model"),
and a real SCM monitor on the tiny backbone with its rule set to fire in the middle of a text."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import torch
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import Field

from saffron_runtime.monitor import MonitorRule, SCMMonitor, SCMMonitorModel

ANSWER = ("Sure, here is a detailed plan. First, gather the materials you need from the store. "
          "Then mix them carefully in a bowl and wait for ten minutes before the next step. "
          "Finally, clean everything up and write down what you did.")


class ChunkedModel(BaseChatModel):
    """Streams ``text`` cut at ``cuts`` (character offsets), then one chunk with ``tool_calls``.

    ``pulled`` counts the chunks the consumer asked for and ``closed`` says whether the stream was
    closed early, so a test can see that a guard stopped the model."""

    text: str = ANSWER
    cuts: list[int] = Field(default_factory=list)
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)
    pulled: int = 0
    closed: bool = False
    bound: dict[str, Any] = Field(default_factory=dict)

    @property
    def _llm_type(self) -> str:
        return "chunked-fake"

    def bind_tools(self, tools, **kwargs):
        self.bound = {"tools": [getattr(t, "name", t) for t in tools], **kwargs}
        return self

    def pieces(self) -> list[str]:
        points = [0, *sorted({c for c in self.cuts if 0 < c < len(self.text)}), len(self.text)]
        return [self.text[a:b] for a, b in zip(points, points[1:], strict=False)]

    def _generate(self, messages, stop=None, run_manager=None, **kwargs) -> ChatResult:
        msg = AIMessage(content=self.text, tool_calls=self.tool_calls)
        return ChatResult(generations=[ChatGeneration(message=msg)])

    def _stream(self, messages, stop=None, run_manager=None, **kwargs) -> Iterator[ChatGenerationChunk]:
        try:
            for piece in self.pieces():
                self.pulled += 1
                yield ChatGenerationChunk(message=AIMessageChunk(content=piece))
            calls = [{"name": c["name"], "args": json.dumps(c["args"]), "id": c["id"], "index": i}
                     for i, c in enumerate(self.tool_calls)]
            self.pulled += 1
            yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=calls))
        except GeneratorExit:
            self.closed = True
            raise


def words(text: str) -> list[int]:
    """Cut points after every space (word-by-word streaming)."""
    return [i + 1 for i, ch in enumerate(text) if ch == " "]


def mid_text_monitor(tiny, text: str = ANSWER, prompt: str = "q"):
    """A real SCM monitor on the tiny backbone whose rule fires about half-way through ``text``."""
    torch.manual_seed(0)
    model = SCMMonitorModel(tiny.reward_backbone, tiny.tokenizer, rule=MonitorRule(theta=1.0, k=1))
    return firing_mid_text(model, text, prompt)


def firing_mid_text(model: SCMMonitorModel, text: str, prompt: str):
    """``model`` with a delay-k rule that fires about half-way through ``text`` (theta the median
    token score, k half the tokens at or above it); returns the monitor and its verdict on the whole
    text fed at once (the reference every chunking must meet)."""
    ref = SCMMonitor(model, rule=MonitorRule(theta=1.0, k=1)).open(prompt)
    ref.feed_text(text)
    ref.finish()
    scores = ref.token_scores
    ranked = sorted(scores)
    mid = len(ranked) // 2
    # theta half-way between two scores, so float noise of a differently batched forward (chunked
    # feeding) cannot move a token across it; k half of the tokens at or above it
    theta = (ranked[mid - 1] + ranked[mid]) / 2
    hits = [i for i, s in enumerate(scores) if s >= theta]
    k = max(1, len(hits) // 2)
    monitor = SCMMonitor(model, rule=MonitorRule(name="delay-k", theta=theta, k=k), hold_back=0)
    s = monitor.open(prompt)
    verdict = s.feed_text(text) or s.finish()
    assert verdict is not None and 0 < verdict.span[0] < len(text) - 20, "the rule must fire mid-text"
    return monitor, verdict


def assert_no_leak(received: str, text: str, verdict) -> None:
    """The consumer got a prefix of the text that ends before the firing token's first character."""
    assert text.startswith(received), f"received text is not a prefix of the answer: {received!r}"
    assert len(received) <= verdict.span[0], (
        f"leak: the consumer got {len(received)} chars, the firing token starts at {verdict.span[0]}")
