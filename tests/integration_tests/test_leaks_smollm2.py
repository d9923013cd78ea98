"""Leak tests on the bundled SmolLM2 monitor and real responses (xstest completions): guard(model) and
the middleware, in every stream mode, never hand a consumer the firing token or anything after it;
6-character chunks give the firing token of the whole text; the held characters are measured."""

from __future__ import annotations

import json

import pytest
from langchain.agents import create_agent
from langchain_core.messages import AIMessageChunk, HumanMessage

from langchain_saffron import guard
from langchain_saffron.middleware import SaffronGuardrailMiddleware

from ..unit_tests.leak_support import ChunkedModel, assert_no_leak, firing_mid_text
from .conftest import DATA_DIR

pytestmark = pytest.mark.smollm2


@pytest.fixture(scope="module")
def cases():
    """Two real responses (the first 300 characters of the first two long xstest completions),
    each with the bundled monitor's rule set to fire half-way through it."""
    from saffron_runtime.monitor import load_monitor

    model = load_monitor("bundled")
    rows = [json.loads(line) for line in (DATA_DIR / "xstest" / "completions.jsonl").open()]
    picked = [r for r in rows if len(r["response"]) > 400][:2]
    return [(r["prompt"], r["response"][:300], *firing_mid_text(model, r["response"][:300], r["prompt"]))
            for r in picked]


def six(text: str) -> list[int]:
    return list(range(6, len(text), 6))


def test_guard_in_every_mode_on_the_bundled_monitor(cases):
    for prompt, text, monitor, verdict in cases:
        g = guard(ChunkedModel(text=text, cuts=six(text)), monitor, on_violation="truncate")
        out = g.invoke(prompt)
        got = out.response_metadata["saffron"]["verdicts"][0]
        assert got["position"] == verdict.position  # 6-char chunks: the whole text's firing token
        assert out.content == text[: verdict.span[0]]
        streamed = "".join(c.content for c in g.stream(prompt))
        assert_no_leak(streamed, text, verdict)
        held = out.response_metadata["saffron"]["held_chars"]
        assert 0 < held < 60, f"the bundled monitor held {held} characters"
        agent = create_agent(g, tools=[])
        msgs = "".join(c.content for c, _ in agent.stream(
            {"messages": [HumanMessage(prompt)]}, stream_mode="messages") if isinstance(c, AIMessageChunk))
        assert_no_leak(msgs, text, verdict)


def test_middleware_on_the_bundled_monitor(cases):
    for prompt, text, monitor, verdict in cases:
        guard_mw = SaffronGuardrailMiddleware(monitor, on_violation="truncate", check_prompts=False)
        agent = create_agent(ChunkedModel(text=text, cuts=six(text)), tools=[], middleware=[guard_mw])
        msgs = "".join(c.content for c, _ in agent.stream(
            {"messages": [HumanMessage(prompt)]}, stream_mode="messages") if isinstance(c, AIMessageChunk))
        assert_no_leak(msgs, text, verdict)
        final = agent.invoke({"messages": [HumanMessage(prompt)]})["messages"][-1]
        assert final.content == text[: verdict.span[0]]
