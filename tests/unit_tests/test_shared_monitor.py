"""The heads monitor on the policy's own hidden states (monitor/shared.py): the same scores as the
separate forward, zero monitor backbone forwards, the fallback where ids cannot be shared, and the
path ChatSaffron reports."""

from __future__ import annotations

import pytest
import torch

from saffron_runtime.guarded import GuardedGeneration
from saffron_runtime.models import LoadedModel
from saffron_runtime.monitor import MonitorRule, SCMMonitor, SCMMonitorModel
from saffron_runtime.search import SearchConfig
from saffron_runtime.testing import build_tiny_models

from .engine_support import tiny_saffron_engine

PROMPT = "how make cake"
NEVER = MonitorRule(theta=1.0, k=50)


@pytest.fixture(scope="module")
def models():
    return build_tiny_models("llama", seed=3)


_engine = tiny_saffron_engine


def _monitor(models, rule: MonitorRule = NEVER, backbone=None) -> SCMMonitorModel:
    torch.manual_seed(0)
    return SCMMonitorModel(backbone if backbone is not None else models.policy, models.tokenizer, rule=rule)


class _Counter:
    """Wraps the monitor's backbone forward (``hidden_states``): counts the calls."""

    def __init__(self, model: SCMMonitorModel) -> None:
        self.calls = 0
        self._inner = model.hidden_states

    def __call__(self, *a, **kw):
        self.calls += 1
        return self._inner(*a, **kw)


def _guarded(engine, monitor, method="saffron", **cfg) -> GuardedGeneration:
    config = SearchConfig(method=method, max_new_tokens=10, budget=3, **cfg)
    ids = engine.chat_prompt_ids(PROMPT)
    return GuardedGeneration(engine, SCMMonitor(monitor) if monitor else None, ids, config, prompt_text=PROMPT)


def _run(gen: GuardedGeneration) -> str:
    return "".join(gen)


@pytest.mark.parametrize("method", ["saffron", "greedy", "best_of_n"])
def test_shared_path_gives_the_separate_forwards_scores_with_no_backbone_forward(models, method, monkeypatch):
    engine = _engine(models)
    monitor = _monitor(models)
    counter = _Counter(monitor)
    monkeypatch.setattr(monitor, "hidden_states", counter)
    gen = _guarded(engine, monitor, method, num_samples=2, temperature=1.0)
    sessions = []
    import saffron_runtime.guarded as guarded_module

    opened = guarded_module.open_session

    def spy(*a, **kw):
        session, path = opened(*a, **kw)
        sessions.append(session)
        return session, path

    monkeypatch.setattr(guarded_module, "open_session", spy)
    text = _run(gen)
    assert gen.outcome.monitor_path == "shared"
    assert counter.calls == 0  # not one monitor backbone forward
    shared = sessions[0]
    assert shared.extra_forwards <= 1  # at most the last token, which the search never expanded
    response = [t for t in gen.outcome.result.token_ids if t not in models.tokenizer.all_special_ids]
    assert shared._ids == response and text == gen.outcome.result.text
    # the separate forward over the same ids (its own KV cache) gives the same scores
    monkeypatch.setattr(monitor, "hidden_states", counter._inner)
    separate = SCMMonitor(monitor).open(PROMPT)
    separate.feed_ids(response)
    assert shared.token_scores == pytest.approx(separate.token_scores, abs=1e-5)
    assert shared.response_scores == pytest.approx(separate.response_scores, abs=1e-5)
    assert not engine.policy_cache.keep_hidden  # released once the stream ended


def test_shared_verdict_equals_the_separate_verdict(models):
    engine = _engine(models)
    firing = MonitorRule(name="delay-k", theta=0.0, k=3)  # fires on the third scored token
    shared_gen = _guarded(engine, _monitor(models, firing), "greedy")
    _run(shared_gen)
    separate_monitor = _monitor(models, firing, backbone=None)
    separate = SCMMonitor(separate_monitor).open(PROMPT)
    greedy = engine.search(engine.chat_prompt_ids(PROMPT), SearchConfig(method="greedy", max_new_tokens=10))
    ids = [t for t in greedy.token_ids if t not in models.tokenizer.all_special_ids]
    expected = separate.feed_ids(ids)
    got = shared_gen.outcome.verdict
    assert shared_gen.outcome.monitor_path == "shared" and got is not None and expected is not None
    assert (got.position, got.rule) == (expected.position, expected.rule)
    assert got.score == pytest.approx(expected.score, abs=1e-5)


def test_separate_path_where_ids_cannot_be_shared(models):
    engine = _engine(models)
    own_backbone = _monitor(models, backbone=models.reward_backbone)  # its own model: nothing to share
    gen = _guarded(engine, own_backbone, "greedy")
    _run(gen)
    assert gen.outcome.monitor_path == "separate"
    prefilled = GuardedGeneration(engine, SCMMonitor(_monitor(models)), engine.chat_prompt_ids(PROMPT),
                                  SearchConfig(method="greedy", max_new_tokens=4), prompt_text=PROMPT,
                                  prefill_ids=[5, 6])  # the policy's context is not the monitor's prefix
    _run(prefilled)
    assert prefilled.outcome.monitor_path == "separate"
    unwatched = _guarded(engine, None, "greedy")
    _run(unwatched)
    assert unwatched.outcome.monitor_path is None


def test_hidden_states_are_kept_only_when_asked_and_leave_with_the_node(models):
    engine = _engine(models)
    engine.reset_caches()
    _run(_guarded(engine, None, "greedy"))
    cache = engine.policy_cache
    assert all(n.hidden is None for n in _nodes(cache.root))
    cache.hold_hidden()
    try:
        engine.search(engine.chat_prompt_ids("name a river"), SearchConfig(method="greedy", max_new_tokens=5))
    finally:
        cache.release_hidden()
    kept = [n for n in _nodes(cache.root) if n.hidden is not None]
    assert kept and all(n.hidden.shape == (models.policy.config.hidden_size,) for n in kept)
    assert kept[0].hidden.nelement() * kept[0].hidden.element_size() == 4 * models.policy.config.hidden_size
    cache.evict(0)
    assert cache.num_nodes == 0 and not any(True for _ in _nodes(cache.root))


def test_chat_saffron_reports_the_monitor_path(models):
    from langchain_saffron import ChatSaffron

    policy = LoadedModel(models.policy, models.tokenizer, "tiny")
    shared = ChatSaffron(policy=policy, mrm=None, monitor=_monitor(models), method="greedy", max_new_tokens=4)
    assert shared.invoke(PROMPT).response_metadata["saffron"]["monitor_path"] == "shared"
    own = ChatSaffron(policy=policy, mrm=None, monitor=_monitor(models, backbone=models.reward_backbone),
                      method="greedy", max_new_tokens=4)
    assert own.invoke(PROMPT).response_metadata["saffron"]["monitor_path"] == "separate"


def _nodes(root):
    stack = list(root.children.values())
    while stack:
        n = stack.pop()
        yield n
        stack.extend(n.children.values())
