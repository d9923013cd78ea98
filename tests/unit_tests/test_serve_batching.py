"""Batching across requests (saffron_runtime/cache/batcher.py): concurrent searches stepped together
through one forward per model give exactly the answers and per-request counters each gives alone,
use fewer forwards than the same requests one after another, and a stopped one leaves within a step."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from saffron_runtime.cache.batcher import StepBatcher
from saffron_runtime.errors import ConfigError
from saffron_runtime.models import LoadedModel, MRMTemplate, MultifurcationRewardModel
from saffron_runtime.search import SearchConfig, SearchEngine
from saffron_runtime.search.result import SearchResult

PROMPTS = ["cake recipe please", "river names now", "why sky blue", "bread baking tips"]
COUNTERS = ("policy_forwards", "policy_tokens", "reward_forwards", "reward_tokens", "cache_hits",
            "cache_misses", "steps", "expanded_nodes", "kv_bytes_copied", "flops_policy",
            "flops_reward", "stopped")


@pytest.fixture()
def engine(tiny: Any) -> Iterator[SearchEngine]:
    """The tiny policy and an MRM whose template adds no shared prefix (each prompt's reward
    prefill then costs the same alone and in company, so every counter can be compared)."""
    mask = torch.zeros(len(tiny.tokenizer), dtype=torch.bool)
    mask[::5] = True
    mrm = MultifurcationRewardModel(tiny.reward_backbone, tiny.tokenizer,
                                    MRMTemplate(prefix="", separator="\n"), unseen_mask=mask)
    eng = SearchEngine(LoadedModel(tiny.policy, tiny.tokenizer, "tiny"), mrm)
    eng.reset_caches()
    yield eng
    for cache in (eng.policy_cache, eng.mrm_cache):
        cache.batcher = None  # the tries live with the session's tiny models: leave them plain
    eng.reset_caches()


def _ids(engine: SearchEngine, prompt: str) -> list[int]:
    """Raw prompt ids (no chat template: prompts share no prefix, so no run hits another's)."""
    return list(engine.policy.tokenizer(prompt, add_special_tokens=False)["input_ids"])


def _alone(engine: SearchEngine, cfg: SearchConfig) -> list[SearchResult]:
    out = []
    for p in PROMPTS:
        engine.reset_caches()
        out.append(engine.search(_ids(engine, p), cfg, prompt_text=p))
    engine.reset_caches()
    return out


def _together(engine: SearchEngine, cfg: SearchConfig, batcher: StepBatcher,
              stops: dict[int, tuple[threading.Event, int]] | None = None) -> list[SearchResult]:
    """Every prompt in its own member thread, started together; ``stops[i] = (event, k)`` sets
    request i's stop event after its k-th streamed chunk (a client that hangs up)."""
    results: list[Any] = [None] * len(PROMPTS)
    start = threading.Barrier(len(PROMPTS))

    def one(i: int, prompt: str) -> None:
        event, after = (stops or {}).get(i, (None, -1))
        with batcher.member():
            start.wait()
            stream = engine.stream(_ids(engine, prompt), cfg, event, prompt_text=prompt)
            for n, _ in enumerate(stream, 1):
                if n == after:
                    event.set()
            results[i] = stream.result

    threads = [threading.Thread(target=one, args=(i, p)) for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert all(not t.is_alive() for t in threads), "a batched search hung"
    return results


def _same(a: SearchResult, b: SearchResult) -> None:
    """Same tokens, text and counters; the score to fp32 rounding (a wider, padded batch sums the
    same products in another order, as a search's own beams already do)."""
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.score == pytest.approx(b.score, rel=1e-5, abs=1e-6)
    assert {k: getattr(a.stats, k) for k in COUNTERS} == {k: getattr(b.stats, k) for k in COUNTERS}


@pytest.mark.parametrize("method", ["greedy", "saffron"])
def test_concurrent_searches_give_exactly_what_each_gives_alone(engine, method):
    cfg = SearchConfig(method=method, budget=3, max_new_tokens=8, max_commit_lag=2)
    alone = _alone(engine, cfg)
    batcher = StepBatcher(window_s=0.2, max_batch=8)
    batcher.attach(engine.policy_cache, engine.mrm_cache)
    together = _together(engine, cfg, batcher)
    for a, b in zip(alone, together, strict=True):
        _same(a, b)
    assert batcher.batches < batcher.calls  # calls were merged: fewer forwards than calls
    assert batcher.active == 0  # every run left


def test_concurrent_greedy_requests_use_fewer_policy_forwards_than_sequential(engine):
    cfg = SearchConfig(method="greedy", max_new_tokens=10, min_new_tokens=10)
    forwards = engine.policy_cache.stats
    before = forwards.forwards
    _alone(engine, cfg)
    sequential = forwards.forwards - before
    batcher = StepBatcher(window_s=0.2, max_batch=8)
    batcher.attach(engine.policy_cache)
    before = forwards.forwards
    _together(engine, cfg, batcher)
    concurrent = forwards.forwards - before
    k, steps = len(PROMPTS), 9  # 4 prefills, then 9 extends each
    assert sequential == k * (1 + steps)
    assert concurrent < sequential
    assert concurrent <= k + 2 * steps  # the extends of the four runs went mostly together


def test_a_stopped_request_leaves_within_one_step_while_the_others_go_on(engine):
    cfg = SearchConfig(method="greedy", max_new_tokens=24, min_new_tokens=24)
    alone = _alone(engine, cfg)
    batcher = StepBatcher(window_s=0.2, max_batch=8)
    batcher.attach(engine.policy_cache)
    stop = threading.Event()
    together = _together(engine, cfg, batcher, stops={1: (stop, 3)})
    cut = together[1]
    assert cut.stats.stopped and cut.stats.steps <= 4  # the 3rd chunk came at step 3
    assert cut.token_ids == alone[1].token_ids[: len(cut.token_ids)]
    for i in (0, 2, 3):
        _same(alone[i], together[i])


def test_a_batcher_refuses_bad_settings_and_a_second_batcher_on_one_trie(engine):
    with pytest.raises(ConfigError, match="max_batch"):
        StepBatcher(max_batch=0)
    with pytest.raises(ConfigError, match="window_s"):
        StepBatcher(window_s=-1)
    StepBatcher().attach(engine.policy_cache)
    with pytest.raises(ConfigError, match="already has a step batcher"):
        StepBatcher().attach(engine.policy_cache)


def test_a_fault_in_the_merged_forward_reaches_every_caller_of_the_batch(engine, monkeypatch):
    cfg = SearchConfig(method="greedy", max_new_tokens=6, min_new_tokens=6)
    batcher = StepBatcher(window_s=0.2, max_batch=8)
    batcher.attach(engine.policy_cache)
    real = engine.policy_cache.extend_now
    calls = {"n": 0}

    def failing(*a: Any, **kw: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected device fault")
        return real(*a, **kw)

    monkeypatch.setattr(engine.policy_cache, "extend_now", failing)
    errors: list[BaseException] = []

    def one(prompt: str) -> None:
        with batcher.member():
            try:
                engine.search(_ids(engine, prompt), cfg, prompt_text=prompt)
            except RuntimeError as e:
                errors.append(e)

    threads = [threading.Thread(target=one, args=(p,)) for p in PROMPTS[:2]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors and all("injected device fault" in str(e) for e in errors)
    assert batcher.active == 0


def _answer(service: Any, prompt: str) -> tuple[str, str, bool]:
    from saffron_runtime.serve.protocol import parse_request

    prepared = service.prepare(parse_request({"messages": [{"role": "user", "content": prompt}]}),
                               threading.Event())
    service.admit(prepared)
    try:
        text = "".join(service.run(prepared))
    finally:
        service.release(prepared)
    end = service.final(prepared)
    return text + end.tail, end.finish_reason, end.saffron["blocked"]


def test_the_service_steps_concurrent_requests_together_and_answers_as_one_at_a_time(saved):
    from saffron_runtime.serve.service import GuardedService, ServiceOptions

    def service(max_batch: int) -> GuardedService:
        return GuardedService(ServiceOptions(
            policy=str(saved / "policy"), mrm=str(saved / "mrm"), monitor=str(saved / "monitor"),
            prm=None, search={"max_new_tokens": 6, "budget": 2}, max_batch=max_batch))

    serial = service(1)
    assert serial.batcher is None
    expected = [_answer(serial, p) for p in PROMPTS]
    batched = service(4)
    got: list[Any] = [None] * len(PROMPTS)
    threads = [threading.Thread(target=lambda i=i, p=p: got.__setitem__(i, _answer(batched, p)))
               for i, p in enumerate(PROMPTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert got == expected
    assert batched.batcher is not None and batched.batcher.batches < batched.batcher.calls
    assert batched.pending == 0 and batched.running == 0 and batched.batcher.active == 0
