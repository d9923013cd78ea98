"""Pruning flagged beams (``prune_flagged_beams``): a flagged beam never reaches the committed text,
the search picks another, every beam flagged ends the search closed, it costs no extra forward, and
with the option off nothing changes."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch

from saffron_runtime.cache import TrieNode
from saffron_runtime.errors import ConfigError
from saffron_runtime.guarded import GuardedGeneration
from saffron_runtime.monitor import MonitorRule, SCMMonitor, SCMMonitorModel
from saffron_runtime.search import SearchConfig, SearchEngine
from saffron_runtime.search.flagging import FLAGGED
from saffron_runtime.testing import build_tiny_models

from .engine_support import tiny_saffron_engine

PROMPT = "how make cake"
NEVER = MonitorRule(theta=1.0, k=50)


@pytest.fixture(scope="module")
def models():
    return build_tiny_models("llama", seed=3)


_engine = tiny_saffron_engine


def _config(method: str = "saffron", **kw) -> SearchConfig:
    return SearchConfig(method=method, max_new_tokens=10, budget=3, max_commit_lag=2, **kw)


class TokenFlagger:
    """A beam monitor that flags any beam whose newest token is one chosen token, and records what
    it saw (it reads the kept hidden state, as the heads do, so a missing one fails the test)."""

    def __init__(self, token: int) -> None:
        self.token = token
        self.seen: list[int] = []

    def start(self) -> object:
        return 0

    def advance(self, states: Sequence[object], nodes: Sequence[TrieNode]) -> tuple[list[object], list[bool]]:
        assert all(n.hidden is not None for n in nodes)
        self.seen += [n.token for n in nodes]
        return list(states), [n.token == self.token for n in nodes]


def _stream(engine, config, monitor=None):
    stream = engine.stream(engine.chat_prompt_ids(PROMPT), config, prompt_text=PROMPT, beam_monitor=monitor)
    chunks = [c.token_ids for c in stream]
    return stream.result, [t for c in chunks for t in c]


@pytest.mark.parametrize("method", ["saffron", "prm_beam"])
def test_a_flagged_token_is_never_committed_and_the_search_picks_another_beam(models, method):
    engine = _engine(models)
    if method == "prm_beam":
        from saffron_runtime.search import ProcessRewardModel

        head = torch.nn.Linear(models.policy.config.hidden_size, 2)
        prompt_ids = lambda p: engine.chat_prompt_ids(p)  # noqa: E731 - the PRM's prefix
        engine = SearchEngine(engine.policy, prm=ProcessRewardModel(models.reward_backbone, head, prompt_ids))
    plain, _ = _stream(engine, _config(method))
    chosen = plain.token_ids[0]  # the unpruned answer's first token
    flagger = TokenFlagger(chosen)
    pruned, committed = _stream(engine, _config(method, prune_flagged_beams=True), flagger)
    assert chosen in flagger.seen  # it was a live beam's token, and was scored
    assert chosen not in committed and chosen not in pruned.token_ids
    assert pruned.token_ids and pruned.token_ids != plain.token_ids  # another beam won
    assert pruned.stats.flagged_beams >= 1 and pruned.stats.stop_reason != FLAGGED
    assert not engine.policy_cache.keep_hidden  # released when the stream ended


def test_every_beam_flagged_ends_the_search_closed(models):
    engine = _engine(models)

    class Everything(TokenFlagger):
        def advance(self, states, nodes):
            return list(states), [True] * len(nodes)

    result, committed = _stream(engine, _config(prune_flagged_beams=True), Everything(-1))
    assert result.stats.stop_reason == FLAGGED and result.stats.stopped
    assert committed == [] and result.token_ids == [] and result.text == ""


def _guarded(engine, monitor, **cfg) -> GuardedGeneration:
    return GuardedGeneration(engine, SCMMonitor(monitor), engine.chat_prompt_ids(PROMPT), _config(**cfg),
                             prompt_text=PROMPT)


def _heads(models, rule: MonitorRule, backbone=None) -> SCMMonitorModel:
    torch.manual_seed(0)
    return SCMMonitorModel(backbone if backbone is not None else models.policy, models.tokenizer, rule=rule)


def test_heads_pruning_costs_no_forward_and_a_silent_monitor_changes_nothing(models, monkeypatch):
    engine = _engine(models)
    monitor = _heads(models, NEVER)
    calls = []
    monkeypatch.setattr(monitor, "hidden_states", lambda *a, **kw: calls.append(1))
    runs = {}
    for on in (False, True):
        engine.reset_caches()
        before = engine.policy_cache.stats.forwards
        gen = _guarded(engine, monitor, prune_flagged_beams=on)
        text = "".join(gen)
        runs[on] = (text, gen.outcome.result.token_ids, engine.policy_cache.stats.forwards - before)
    assert runs[True] == runs[False]  # same answer, same number of policy forwards
    assert calls == []  # the monitor's backbone never ran


def test_a_heads_monitor_that_flags_everything_blocks_with_nothing_released(models):
    engine = _engine(models)
    gen = _guarded(engine, _heads(models, MonitorRule(theta=0.0, k=1)), prune_flagged_beams=True)
    released = "".join(gen)
    out = gen.outcome
    assert out.blocked and out.verdict.rule == "beams-flagged"
    assert released == "" and out.committed_text == "" and out.result.stats.stop_reason == FLAGGED


def test_heads_flags_follow_the_streaming_rule_on_each_beams_own_path(models):
    """The beam monitor's per-path rule state: a beam is flagged exactly when the streaming monitor
    fed its tokens would fire (here: on the third token scored at or above theta=0)."""
    from saffron_runtime.monitor.shared import HeadsBeamMonitor

    engine = _engine(models)
    rule = MonitorRule(name="delay-k", theta=0.0, k=3)
    monitor = _heads(models, rule)
    beams = HeadsBeamMonitor(monitor, rule)
    cache = engine.policy_cache
    cache.hold_hidden()
    try:
        root = cache.prefill(engine.chat_prompt_ids(PROMPT)).nodes[0]
        a = cache.extend([root, root], [40, 41]).nodes
        states, fired = beams.advance([beams.start(), beams.start()], a)
        assert fired == [False, False]
        siblings = cache.extend([a[0], a[0]], [45, 46]).nodes  # two children of one beam's state
        assert beams.advance([states[0], states[0]], siblings)[1] == [False, False]
        b = cache.extend(a, [42, 43]).nodes
        states, fired = beams.advance(states, b)
        assert fired == [False, False]
        c = cache.extend([b[0]], [44]).nodes
        _, fired = beams.advance([states[0]], c)
        assert fired == [True]
        b[1].hidden = None  # a node whose hidden state was not kept fails closed
        assert beams.advance([states[1]], [b[1]])[1] == [True]
    finally:
        cache.release_hidden()


def test_pruning_without_a_beam_monitor_is_a_clear_error(models):
    engine = _engine(models)
    with pytest.raises(ConfigError, match="prune_flagged_beams=True needs a monitor"):
        engine.search(engine.chat_prompt_ids(PROMPT), _config(prune_flagged_beams=True), prompt_text=PROMPT)
    own = _heads(models, NEVER, backbone=models.reward_backbone)  # its own backbone: no shared states
    with pytest.raises(ConfigError, match="cannot score beams"):
        "".join(_guarded(engine, own, prune_flagged_beams=True))
    # methods without a frontier ignore the setting, as they ignore budget
    assert engine.search(engine.chat_prompt_ids(PROMPT), _config("greedy", prune_flagged_beams=True)).token_ids


def test_chat_saffron_takes_the_setting_and_refuses_when_every_beam_is_flagged(models):
    from langchain_saffron import ChatSaffron

    engine = _engine(models)
    chat = ChatSaffron(policy=engine.policy, mrm=engine.mrm, monitor=_heads(models, MonitorRule(theta=0.0, k=1)),
                       budget=3, max_new_tokens=6, prune_flagged_beams=True, on_violation="refuse")
    out = chat.invoke(PROMPT)
    meta = out.response_metadata["saffron"]
    assert meta["blocked"] and out.content == "I can't help with that."
    assert meta["stats"]["stop_reason"] == FLAGGED
