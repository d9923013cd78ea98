"""Search on tiny random models: configs, per-node reward accounting, the default and faithful
finished-beam rules, streaming commits (multi-byte text, max_commit_lag), stop event, baselines."""

from __future__ import annotations

import threading

import pytest
import torch

from saffron_runtime.constraints import Grammar
from saffron_runtime.errors import ConfigError, PromptError
from saffron_runtime.models import LoadedModel, MRMTemplate, MultifurcationRewardModel
from saffron_runtime.search import ProcessRewardModel, SearchConfig, SearchEngine
from saffron_runtime.search.decode import decode
from saffron_runtime.testing import build_tiny_models
from saffron_runtime.training.judges import chat_prefix_builder

PROMPT = "how make cake"


@pytest.fixture(scope="module")
def models():
    return build_tiny_models("llama", seed=2)


def make_engine(models, *, eos_bias: float | None = None, unseen_every: int = 5, eos_unseen: bool = False,
                eos_supervised: bool = True) -> SearchEngine:
    tok = models.tokenizer
    policy_model = models.policy
    if eos_bias is not None:  # a real model whose head favours EOS, so beams finish
        from saffron_runtime.testing import tiny_causal_lm

        policy_model = tiny_causal_lm(len(tok), seed=2, eos_token_id=tok.eos_token_id)
        head = torch.nn.Linear(64, len(tok), bias=True)
        with torch.no_grad():
            head.weight.copy_(policy_model.lm_head.weight)
            head.bias.zero_()
            head.bias[tok.eos_token_id] = eos_bias
        policy_model.lm_head = head
    mask = torch.zeros(len(tok), dtype=torch.bool)
    mask[::unseen_every] = True
    mask[tok.eos_token_id] = eos_unseen
    mrm = MultifurcationRewardModel(models.reward_backbone, tok, MRMTemplate(prefix="<|im_start|>", separator="\n"),
                                    unseen_mask=mask, eos_supervised=eos_supervised)
    torch.manual_seed(0)
    prm = ProcessRewardModel(models.reward_backbone, torch.nn.Linear(64, 2), chat_prefix_builder(tok))
    return SearchEngine(LoadedModel(policy_model, tok, "tiny"), mrm, prm)


RAW = {"within_prefix_weight": 1.0}
"""The MRM's raw rewards: the tests of the rules that read them (the default shrinks them)."""


def run(engine: SearchEngine, **cfg):
    ids = engine.chat_prompt_ids(PROMPT)
    stream = engine.stream(ids, SearchConfig(**cfg), prompt_text=PROMPT)
    chunks = list(stream)
    return stream.result, chunks


@pytest.mark.parametrize(("field", "value", "msg"), [
    ("budget", 0, "SearchConfig.budget=0: must be >= 1"),
    ("top_p", 0.0, "SearchConfig.top_p=0.0: must be > 0.0"),
    ("top_p", 1.5, "SearchConfig.top_p=1.5: must be <= 1.0"),
    ("max_new_tokens", 0, "SearchConfig.max_new_tokens=0: must be >= 1"),
    ("temperature", -1.0, "SearchConfig.temperature=-1.0: must be >= 0.0"),
    ("max_commit_lag", 0, "SearchConfig.max_commit_lag=0: must be >= 1"),
    ("method", "mcts", "SearchConfig.method='mcts': Input should be 'saffron', 'best_of_n', 'prm_beam' or 'greedy'"),
])
def test_invalid_config_names_field_and_range(field, value, msg):
    with pytest.raises(ConfigError) as e:
        SearchConfig(**{field: value})
    assert msg in str(e.value)
    with pytest.raises(ConfigError, match="bugdet"):
        SearchConfig(bugdet=3)


class _CountingForward:
    """Wraps a model's ``forward``: counts sequences run (a batch of b rows is b forwards)."""

    def __init__(self, forward):
        self.forward = forward
        self.sequences = 0
        self.calls = 0

    def __call__(self, *args, **kwargs):
        ids = kwargs["input_ids"] if "input_ids" in kwargs else args[0]
        self.sequences += int(ids.shape[0])
        self.calls += 1
        return self.forward(*args, **kwargs)


def test_one_reward_forward_per_saffron_node_and_k_per_prm_node(models, monkeypatch):
    eng = make_engine(models)
    counter = _CountingForward(models.reward_backbone.forward)
    monkeypatch.setattr(models.reward_backbone, "forward", counter)  # the MRM's and the PRM's backbone
    eng.reset_caches()
    r, _ = run(eng, method="saffron", budget=3, max_new_tokens=10)
    assert r.stats.expanded_nodes > 10 and r.stats.reward_forwards == r.stats.expanded_nodes
    # one reward vector per ranked node: the prompt's (one prefill) and one batched row per child kept
    assert counter.sequences == r.stats.expanded_nodes and counter.calls == r.stats.steps
    for k in (2, 5):
        counter.sequences = counter.calls = 0
        r, _ = run(eng, method="prm_beam", budget=3, prm_children=k, max_new_tokens=10)
        assert r.stats.reward_forwards == k * r.stats.expanded_nodes
        assert counter.sequences == 1 + k * r.stats.expanded_nodes  # the prompt, then k per node
        assert counter.calls == 1 + r.stats.steps
    assert r.stats.flops_policy > 0 and r.stats.flops_reward > 0 and r.stats.wall_s > 0


def _record_saffron_steps(monkeypatch) -> list[tuple[list[list[int]], list[tuple[tuple[int, ...], int]]]]:
    """Patch Saffron's selection to record, per step, the frontier it ranked and the kept children
    as (parent response ids, token) pairs (children that joined the frontier or the finished pool)."""
    from saffron_runtime.search.frontier import FrontierSearch
    from saffron_runtime.search.saffron import Saffron

    steps: list = []

    def select(self, frontier, pool, cands):
        before = {id(b) for b in pool}
        ranked = [b.ids for b in frontier if not b.finished]
        new_frontier, new_pool, grow = FrontierSearch.select(self, frontier, pool, cands)
        kept = new_frontier + [b for b in new_pool if id(b) not in before]
        steps.append((ranked, sorted((tuple(b.ids[:-1]), b.ids[-1]) for b in kept)))
        return new_frontier, new_pool, grow

    monkeypatch.setattr(Saffron, "select", select)
    return steps


def _policy_nucleus(eng: SearchEngine, prompt_ids: list[int], ids: list[int], top_p: float,
                    min_new_tokens: int) -> set[int]:
    """The policy's nucleus after ``ids``, from an uncached forward: a token is in it when the
    probability ranked above it is below ``top_p``; EOS is banned before ``min_new_tokens``."""
    with torch.no_grad():
        logits = eng.policy.model(torch.tensor([prompt_ids + ids])).logits[0, -1].float()
    if len(ids) < min_new_tokens:
        logits[sorted(eng.eos_ids)] = float("-inf")
    probs = torch.softmax(logits, -1).tolist()
    kept, mass = set(), 0.0
    for t in sorted(range(len(probs)), key=lambda t: -probs[t]):
        if (mass >= top_p and kept) or probs[t] == 0:
            break
        kept.add(t)
        mass += probs[t]
    return kept


def _mrm_rewards(eng: SearchEngine, ids: list[int]) -> torch.Tensor:
    """The MRM's reward vector after ``ids``, from an uncached forward, unseen tokens masked."""
    mrm = eng.mrm
    prefix = mrm.template.prompt_ids(mrm.tokenizer, PROMPT)
    raw = mrm.rewards(torch.tensor([prefix + ids]))[0]
    return raw.masked_fill(mrm.unseen_mask[: raw.shape[0]], -1024.0)


def test_saffron_keeps_global_top_budget_by_reward_and_masks_unseen(models, monkeypatch):
    eng = make_engine(models, unseen_every=2)
    steps = _record_saffron_steps(monkeypatch)
    budget, top_p = 4, 0.8
    r, _ = run(eng, method="saffron", budget=budget, max_new_tokens=6, top_p=top_p, objective="reward",
               unseen_from_parent=False, **RAW)  # the paper's conservative exploration: unseen tokens lose
    prompt_ids = eng.chat_prompt_ids(PROMPT)
    assert len(steps) >= 3 and any(len(ranked) > 1 for ranked, _ in steps)
    for ranked, kept in steps:
        # brute force: every (frontier node, nucleus child) pair, ranked by the MRM's reward
        pairs = []
        for ids in ranked:
            rewards = _mrm_rewards(eng, ids)
            for t in _policy_nucleus(eng, prompt_ids, ids, top_p, 1):
                pairs.append((float(rewards[t]), tuple(ids), t))
        pairs.sort(key=lambda p: -p[0])
        expected, n_live = [], 0
        for rank_i, (_, parent, t) in enumerate(pairs):
            if n_live >= budget:
                break
            if t in eng.eos_ids:  # a finished hypothesis counts only within the top budget
                if rank_i < budget:
                    expected.append((parent, t))
                continue
            n_live += 1
            expected.append((parent, t))
        assert kept == sorted(expected)
    mask = eng.mrm.unseen_mask
    assert not any(bool(mask[t]) for t in r.token_ids if t != eng.policy.tokenizer.eos_token_id)
    assert not any(bool(mask[t]) for _, kept in steps for _, t in kept)


def _logprob(eng: SearchEngine, prompt_ids: list[int], ids: list[int]) -> float:
    """The policy's summed log-probability of ``ids`` after the prompt, from one uncached forward."""
    seq = torch.tensor([prompt_ids + ids])
    with torch.no_grad():
        logp = torch.log_softmax(eng.policy.model(seq).logits[0].float(), -1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + i, t] for i, t in enumerate(ids)))


@pytest.mark.parametrize(("quantile", "unsafe_weight"), [(0.0, 0.0), (0.5, 0.0), (0.99, 50.0)])
def test_safe_likelihood_ranks_safe_children_by_the_policy_and_the_rest_by_reward(
    models, monkeypatch, quantile, unsafe_weight
):
    """Brute force over every (frontier node, nucleus child) pair: children with reward >= the
    threshold first, by the beam's log-probability; then the others, by reward."""
    eng = make_engine(models, unseen_every=2)
    prompt_ids = eng.chat_prompt_ids(PROMPT)
    root = _mrm_rewards(eng, [])
    seen = root[root > -1024]
    threshold = float(seen.quantile(quantile)) if quantile else -1.0e9  # 0: every child is safe
    steps = _record_saffron_steps(monkeypatch)
    budget = 3
    r, _ = run(eng, method="saffron", budget=budget, max_new_tokens=5, min_new_tokens=6,
               objective="safe_likelihood", safe_threshold=threshold, unseen_from_parent=False,
               unsafe_logprob_weight=unsafe_weight, **RAW)
    assert len(steps) >= 3
    mixed = 0
    for ranked, kept in steps:
        pairs = []
        for ids in ranked:
            rewards = _mrm_rewards(eng, ids)
            for t in _policy_nucleus(eng, prompt_ids, ids, 0.8, 6):
                reward = float(rewards[t])
                safe = reward >= threshold
                logprob = _logprob(eng, prompt_ids, ids + [t])
                # unsafe children: reward, plus the weighted mean log-probability when asked
                key = (1, logprob) if safe else (0, reward + unsafe_weight * logprob / (len(ids) + 1))
                pairs.append((key, tuple(ids), t))
        mixed += len({k[0] for k, _, _ in pairs}) > 1
        pairs.sort(key=lambda p: p[0], reverse=True)
        assert kept == sorted((parent, t) for _, parent, t in pairs[:budget])
    if quantile:
        assert mixed >= 1  # some step had to choose between safe and unsafe children


def test_safe_likelihood_with_every_child_safe_is_beam_search_of_the_policy(models):
    """With nothing predicted unsafe, the answer is the policy's own beam search over its nucleus."""
    eng = make_engine(models)
    prompt_ids = eng.chat_prompt_ids(PROMPT)
    budget, steps = 3, 5
    beams: list[list[int]] = [[]]
    for _ in range(steps):
        cands = [ids + [t] for ids in beams for t in _policy_nucleus(eng, prompt_ids, ids, 0.8, 99)]
        beams = sorted(cands, key=lambda ids: _logprob(eng, prompt_ids, ids), reverse=True)[:budget]
    r, _ = run(eng, method="saffron", budget=budget, max_new_tokens=steps, min_new_tokens=99,
               objective="safe_likelihood", safe_threshold=-1.0e9)
    assert r.token_ids == beams[0]
    reward_ranked, _ = run(eng, method="saffron", budget=budget, max_new_tokens=steps, min_new_tokens=99,
                           objective="reward")
    assert reward_ranked.token_ids != beams[0]  # the paper's ranking follows the MRM instead


def test_every_saffron_child_lies_in_its_parents_policy_nucleus(models, monkeypatch):
    eng = make_engine(models)
    steps = _record_saffron_steps(monkeypatch)
    prompt_ids = eng.chat_prompt_ids(PROMPT)
    for top_p in (0.3, 0.9):
        steps.clear()
        run(eng, method="saffron", budget=4, max_new_tokens=6, top_p=top_p, min_new_tokens=3)
        kept = [pair for _, step_kept in steps for pair in step_kept]
        assert len(kept) >= 8
        for parent, t in kept:
            assert t in _policy_nucleus(eng, prompt_ids, list(parent), top_p, 3), (parent, t)


def test_default_rule_returns_best_finished_hypothesis(models):
    eng = make_engine(models, eos_bias=6.0, eos_unseen=True, eos_supervised=False)
    r, _ = run(eng, method="saffron", budget=4, max_new_tokens=12, min_new_tokens=2, objective="reward")
    assert r.finished and r.pool and all(h.finished for h in r.pool)
    assert r.score == max(h.score for h in r.pool) and r.score > -1024  # last token's reward stands for EOS
    assert len(r.pool) <= 4


def test_faithful_quirks_eos_unseen_ties_and_first_finished(models):
    eng = make_engine(models, eos_bias=12.0, eos_unseen=True, eos_supervised=False)
    r, _ = run(eng, method="saffron", budget=4, max_new_tokens=12, min_new_tokens=2, faithful=True)
    finished = [h for h in r.pool if h.finished]
    assert len(finished) >= 2
    assert all(h.score == -1024.0 for h in finished)  # EOS stays unseen: every finished beam ties
    assert r.token_ids == finished[0].token_ids and r.score == -1024.0  # the first finished beam, not the best
    default, _ = run(eng, method="saffron", budget=4, max_new_tokens=12, min_new_tokens=2)
    assert default.score > -1024.0


def test_eos_banned_for_min_new_tokens(models):
    eng = make_engine(models, eos_bias=50.0)
    r, _ = run(eng, method="greedy", max_new_tokens=10, min_new_tokens=4)
    assert len(r.token_ids) == 5 and r.token_ids[-1] == eng.policy.tokenizer.eos_token_id


def _has_repeated_ngram(ids: list[int], n: int) -> bool:
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(grams) != len(set(grams))


def _looping(method: str) -> dict:
    """24 tokens of ``method`` where the tiny random policy loops; a tiny nucleus makes Best-of-N's samples
    the policy's top token, which it loops on."""
    return {"method": method, "budget": 2, "num_samples": 2, "max_new_tokens": 24, "min_new_tokens": 24,
            "top_p": 0.01 if method == "best_of_n" else 0.8}


@pytest.mark.parametrize("method", ["saffron", "prm_beam", "best_of_n", "greedy"])
def test_no_repeat_ngram_size_keeps_every_methods_answer_free_of_a_repeated_ngram(models, method):
    eng = make_engine(models)
    cfg = _looping(method)
    plain, _ = run(eng, **cfg)
    assert _has_repeated_ngram(plain.token_ids, 2)
    banned, _ = run(eng, **cfg, no_repeat_ngram_size=2)
    assert len(banned.token_ids) == 24 and not _has_repeated_ngram(banned.token_ids, 2)


@pytest.mark.parametrize("method", ["saffron", "prm_beam", "best_of_n", "greedy"])
def test_repetition_penalty_makes_every_methods_answer_repeat_fewer_tokens(models, method):
    eng = make_engine(models)
    cfg = _looping(method)
    plain, _ = run(eng, **cfg)
    penalised, _ = run(eng, **cfg, repetition_penalty=10.0)
    assert len(penalised.token_ids) == 24
    assert len(set(penalised.token_ids)) > len(set(plain.token_ids))


def test_repetition_penalty_must_be_positive():
    with pytest.raises(ConfigError, match="repetition_penalty"):
        SearchConfig(repetition_penalty=0.0)


def test_unseen_from_parent_lets_saffron_pick_a_never_supervised_child(models):
    eng = make_engine(models, unseen_every=2)  # every other token unseen
    unseen = eng.mrm.unseen_mask
    common = dict(method="saffron", budget=2, max_new_tokens=8, min_new_tokens=8, objective="reward", **RAW)
    plain, _ = run(eng, **common, unseen_from_parent=False)
    assert not any(bool(unseen[t]) for t in plain.token_ids)
    faithful, _ = run(eng, **common, unseen_from_parent=True, faithful=True)  # the paper's exploration
    assert not any(bool(unseen[t]) for t in faithful.token_ids)
    freed, _ = run(eng, **common)  # the default with raw rewards: unseen tokens take the parent's reward
    assert any(bool(unseen[t]) for t in freed.token_ids)


def test_unseen_siblings_cap_lowers_what_never_supervised_children_inherit(models):
    eng = make_engine(models, unseen_every=2)
    unseen = eng.mrm.unseen_mask
    common = dict(method="saffron", budget=2, max_new_tokens=12, min_new_tokens=12, objective="reward", **RAW)
    freed, _ = run(eng, **common)
    capped, _ = run(eng, **common, unseen_siblings_cap=True)  # inherit at most the seen siblings' mean
    n_freed, n_capped = (sum(bool(unseen[t]) for t in r.token_ids) for r in (freed, capped))
    assert n_capped < n_freed


def test_within_prefix_weight_zero_leaves_the_order_of_one_nodes_children_to_the_policy(models):
    eng = make_engine(models)
    greedy, _ = run(eng, method="greedy", max_new_tokens=12, min_new_tokens=12)
    # every child counts unsafe, and those rank by reward + mean log-probability
    common = dict(method="saffron", budget=1, max_new_tokens=12, min_new_tokens=12, safe_threshold=1e9,
                  unsafe_logprob_weight=1.0, top_p=1.0)
    raw, _ = run(eng, **common)  # the MRM's spread among the children decides
    flat, _ = run(eng, **common, within_prefix_weight=0.0)  # no spread left: the policy decides
    assert flat.token_ids == greedy.token_ids and raw.token_ids != greedy.token_ids


def _multibyte_grammar(tok):
    # ß, ø, ж, ё are not in the tokenizer's training text: each is two byte-tokens, so they always span tokens
    return Grammar(tok, "regex", "ßø( (жё|ßø|café|中文))*")


@pytest.mark.parametrize("method", ["saffron", "prm_beam", "best_of_n", "greedy"])
@pytest.mark.parametrize("lag", [None, 2])
def test_stream_concatenation_equals_decode_with_multibyte_text(models, method, lag):
    eng = make_engine(models)
    tok = eng.policy.tokenizer
    ids = eng.chat_prompt_ids(PROMPT)
    cfg = SearchConfig(method=method, budget=3, max_new_tokens=14, num_samples=3, prm_children=3,
                       max_commit_lag=lag)
    stream = eng.stream(ids, cfg, prompt_text=PROMPT, constraint=_multibyte_grammar(tok))
    chunks = list(stream)
    r = stream.result
    text = "".join(c.text for c in chunks)
    assert text == decode(tok, r.token_ids).rstrip("\ufffd") == r.text  # a cut last character is dropped
    assert "\ufffd" not in text and any(ord(ch) > 127 for ch in text)
    assert [t for c in chunks for t in c.token_ids] == r.token_ids
    assert any("\ufffd" in tok.decode([t]) for t in r.token_ids)  # some character spans two tokens
    if lag is not None and method in ("saffron", "prm_beam"):
        committed = 0
        for c in chunks[:-1]:
            committed += len(c.token_ids)
            assert committed >= c.step - lag


def test_stop_event_ends_the_search_within_one_step(models):
    eng = make_engine(models)
    ids = eng.chat_prompt_ids(PROMPT)
    stop = threading.Event()
    stream = eng.stream(ids, SearchConfig(method="saffron", budget=2, max_new_tokens=40, max_commit_lag=1),
                        stop, prompt_text=PROMPT)
    seen_step = None
    for c in stream:
        if c.step >= 3 and seen_step is None:
            stop.set()
            seen_step = c.step
    r = stream.result
    assert r.stats.stopped and r.stats.steps <= seen_step + 1
    stop2 = threading.Event()
    stop2.set()
    assert eng.search(ids, SearchConfig(method="greedy"), stop2).stats.steps == 0


def test_stop_strings_end_a_beam(models):
    eng = make_engine(models)
    tok = eng.policy.tokenizer
    ids = eng.chat_prompt_ids(PROMPT)
    r = eng.search(ids, SearchConfig(method="greedy", max_new_tokens=20, stop=["中"]),
                   constraint=Grammar(tok, "regex", "café 中文 café"))
    assert r.finished and r.text == "café "


def test_temperature_zero_does_not_make_saffron_greedy(models):
    eng = make_engine(models)
    ids = eng.chat_prompt_ids(PROMPT)
    a = eng.search(ids, SearchConfig(method="saffron", temperature=0.0, max_new_tokens=8), prompt_text=PROMPT)
    b = eng.search(ids, SearchConfig(method="saffron", temperature=1.0, max_new_tokens=8), prompt_text=PROMPT)
    g = eng.search(ids, SearchConfig(method="greedy", max_new_tokens=8))
    assert a.token_ids == b.token_ids and a.token_ids != g.token_ids


def test_best_of_n_counts_scorer_compute_and_ranks_by_it(models):
    eng = make_engine(models)
    ids = eng.chat_prompt_ids(PROMPT)

    def scorer(prompt: str, response_ids: list[int]) -> float:
        return -float(len(response_ids)) + 0.001 * sum(response_ids)

    r = eng.search(ids, SearchConfig(method="best_of_n", num_samples=5, max_new_tokens=6, temperature=1.0),
                   prompt_text=PROMPT, scorer=scorer)
    assert r.score == max(h.score for h in r.pool) and len(r.pool) == 5
    assert r.stats.reward_forwards == sum(len(h.token_ids) for h in r.pool)
    m = eng.search(ids, SearchConfig(method="best_of_n", num_samples=5, max_new_tokens=6), prompt_text=PROMPT)
    assert m.stats.flops_reward > 0 and m.stats.reward_forwards == sum(len(h.token_ids) for h in m.pool)


def test_clear_errors(models):
    eng = make_engine(models)
    with pytest.raises(PromptError, match="the prompt is empty"):
        eng.search([], SearchConfig())
    with pytest.raises(ConfigError, match="needs prompt_text"):
        eng.search([1, 2], SearchConfig(method="saffron"))
    with pytest.raises(PromptError, match="more than the policy's context of 1024"):
        eng.search([1] * 1000, SearchConfig(max_new_tokens=50), prompt_text="x")
    bare = SearchEngine(eng.policy)
    with pytest.raises(ConfigError, match="needs a multifurcation reward model"):
        bare.search([1, 2], SearchConfig(method="saffron"), prompt_text="x")


def test_concurrent_searches_on_one_engine_match_serial(models):
    eng = make_engine(models)
    prompts = ["how make cake", "help water plan", "sorry the safe", "café help"]
    cfg = SearchConfig(method="saffron", budget=3, max_new_tokens=8)
    serial = {p: eng.search(eng.chat_prompt_ids(p), cfg, prompt_text=p).token_ids for p in prompts}
    out: dict[str, list[int]] = {}

    def work(p: str) -> None:
        out[p] = eng.search(eng.chat_prompt_ids(p), cfg, prompt_text=p).token_ids

    threads = [threading.Thread(target=work, args=(p,)) for p in prompts * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == serial
