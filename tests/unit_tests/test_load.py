"""Load held: 32 concurrent guarded streams (threads, and asyncio) with different prompts give exactly
the answers and verdicts each gives alone (greedy), and a stop set mid-stream frees its worker within
one step, counted by the policy forwards each worker runs after the stop."""

from __future__ import annotations

import asyncio
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from langchain_saffron.chat_models import ChatSaffron
from saffron_runtime.guarded import GuardedGeneration
from saffron_runtime.models import LoadedModel
from saffron_runtime.monitor import CallableMonitor
from saffron_runtime.search import SearchConfig

N = 32
PROMPTS = [  # random characters: the tiny random policy answers most of them differently
    "".join(random.Random(i).choice("abcdefghijklmnopqrstuvwxyz0123456789{}[]") for _ in range(12))
    + (" halt" if i % 3 == 0 else "")
    for i in range(N)
]


def flag(prompt: str, text: str) -> float:
    """Prompts with "halt" are flagged once their answer passes 6 characters; the rest never are."""
    return 1.0 if "halt" in prompt and len(text) > 6 else 0.0


@pytest.fixture(scope="module")
def model(tiny) -> ChatSaffron:
    return ChatSaffron(policy=LoadedModel(tiny.policy, tiny.tokenizer, "tiny-llama"), mrm=None, prm=None,
                       monitor=CallableMonitor(flag, every_chars=1), method="greedy", max_tokens=6,
                       min_new_tokens=6, max_commit_lag=1, on_violation="truncate")


def answer(msg: Any) -> tuple[str, bool]:
    return str(msg.content), msg.response_metadata["saffron"]["blocked"]


@pytest.fixture(scope="module")
def solo(model) -> list[tuple[str, bool]]:
    out = [answer(model.invoke(p)) for p in PROMPTS]
    assert len({text for text, _ in out}) > N // 2, "prompts must differ in their answers, or a mix-up hides"
    assert 0 < sum(blocked for _, blocked in out) < N
    return out


def test_32_threads_give_the_solo_answers(model, solo):
    with ThreadPoolExecutor(N) as pool:
        got = list(pool.map(lambda p: answer(model.invoke(p)), PROMPTS))
    assert got == solo


def test_32_asyncio_streams_give_the_solo_answers(model, solo):
    async def one(p: str) -> tuple[str, bool]:
        text, blocked = "", False
        async for c in model.astream(p):
            text += str(c.content)
            blocked = blocked or bool((c.response_metadata.get("saffron") or {}).get("blocked"))
        return text, blocked

    async def run() -> list[tuple[str, bool]]:
        return list(await asyncio.gather(*(one(p) for p in PROMPTS)))

    assert asyncio.run(run()) == solo


def test_a_stop_frees_its_worker_within_one_step_under_load(model, tiny, monkeypatch):
    """16 of 32 concurrent workers are stopped after their second delta; each runs at most one policy
    forward after the stop (counted per worker thread by wrapping the policy's forward)."""
    counts = threading.local()
    real = tiny.policy.forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        counts.n = getattr(counts, "n", 0) + 1
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny.policy, "forward", counting)
    engine = model.engine
    cfg = SearchConfig(method="greedy", max_new_tokens=16, min_new_tokens=16)

    def work(i: int) -> tuple[int, int]:
        stop = threading.Event()
        ids = engine.chat_prompt_ids(PROMPTS[i])
        gen = GuardedGeneration(engine, None, ids, cfg, prompt_text=PROMPTS[i], stop_event=stop)
        at_stop = None
        for k, _ in enumerate(gen):
            if i % 2 == 0 and k == 1:
                stop.set()
                at_stop = counts.n
        total = counts.n
        return (total - at_stop if at_stop is not None else -1), total

    with ThreadPoolExecutor(N) as pool:
        results = list(pool.map(work, range(N)))
    after = [a for a, _ in results[0::2]]
    assert max(after) <= 1, after  # within one step of the stop
    assert min(t for _, t in results[1::2]) >= 16  # the others ran all their steps
