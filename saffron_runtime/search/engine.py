"""Search over a policy with reward models, on trie KV caches: Saffron, Best-of-N, PRM beam, greedy.

``SearchEngine.search(prompt_ids, config, stop_event)`` returns a :class:`SearchResult`;
``SearchEngine.stream(...)`` yields the committed tokens (those every live beam agrees on) as soon
as they are final, and holds the result in ``.result`` once exhausted. The stop event is checked
once per step, so setting it ends the search within one step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from saffron_runtime.cache import TrieKVCache, TrieNode, TrieSession
from saffron_runtime.cancel import is_stopped
from saffron_runtime.constraints import ConstraintState, Grammar
from saffron_runtime.errors import ConfigError, PromptError
from saffron_runtime.models.chat import chat_prompt_ids
from saffron_runtime.models.flops import FlopsModel
from saffron_runtime.models.loading import LoadedModel
from saffron_runtime.models.mrm import MultifurcationRewardModel
from saffron_runtime.models.vocab import check_vocab_compatible
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.decode import IncrementalDecoder, decode, final_text
from saffron_runtime.search.nucleus import nucleus
from saffron_runtime.search.prm import ProcessRewardModel
from saffron_runtime.search.result import Hypothesis, SearchResult, SearchStats

Scorer = Callable[[str, list[int]], float]


@dataclass
class StreamChunk:
    """Newly committed tokens and the text they complete (may be empty mid-character)."""

    token_ids: list[int]
    text: str
    step: int = 0  # search steps completed when these tokens were committed


@dataclass(eq=False)
class _Beam:
    pnode: TrieNode
    ids: list[int]
    score: float
    logits: torch.Tensor | None = None
    rnode: TrieNode | None = None
    rewards: torch.Tensor | None = None
    constraint: ConstraintState | None = None
    finished: bool = False
    rank: float = float("-inf")  # faithful mode's ranking key
    parent: _Beam | None = None  # set until the beam's own forward has run


@dataclass
class _Run:
    """Per-search state: sessions on the tries, stats, commit tracking."""

    config: SearchConfig
    stop_event: threading.Event | None
    stats: SearchStats
    decoder: IncrementalDecoder
    sessions: list[TrieSession] = field(default_factory=list)
    committed: int = 0
    t0: float = field(default_factory=time.perf_counter)
    reward_extra: list[int] = field(default_factory=list)  # prefill ids the reward models read


def _common_prefix(seqs: Sequence[list[int]]) -> int:
    """Length of the longest common prefix of the sequences."""
    if not seqs:
        return 0
    n, first = 0, seqs[0]
    shortest = min(len(x) for x in seqs)
    while n < shortest and all(x[n] == first[n] for x in seqs):
        n += 1
    return n


class SearchStream:
    """Iterator of :class:`StreamChunk`; ``result`` is set when it is exhausted."""

    def __init__(self, gen: Iterator[StreamChunk], stats: SearchStats) -> None:
        self._gen = gen
        self.stats = stats  # live counters, also valid when the stream is closed early
        self.result: SearchResult | None = None

    def __iter__(self) -> Iterator[StreamChunk]:
        self.result = yield from self._gen
        return self.result

    def run(self) -> SearchResult:
        """Consume the stream and return the result."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class SearchEngine:
    """A policy plus optional MRM / PRM, each with the trie that lives with its model."""

    def __init__(
        self,
        policy: LoadedModel,
        mrm: MultifurcationRewardModel | None = None,
        prm: ProcessRewardModel | None = None,
        *,
        cache_bytes: int | None = None,
    ) -> None:
        self.policy = policy
        self.mrm = mrm
        self.prm = prm
        if mrm is not None:
            check_vocab_compatible(
                policy.tokenizer, mrm.tokenizer, token_map=mrm.token_map, what="MRM"
            )
        self.policy_cache = TrieKVCache.for_model(policy.model, max_bytes=cache_bytes)
        self.mrm_cache = TrieKVCache.for_model(mrm.model, max_bytes=cache_bytes) if mrm else None
        self.prm_cache = TrieKVCache.for_model(prm.model, max_bytes=cache_bytes) if prm else None
        self._flops_policy = FlopsModel.of(policy.model)
        self._flops_mrm = FlopsModel.of(mrm.model) if mrm else None
        self._flops_prm = FlopsModel.of(prm.model) if prm else None
        tok = policy.tokenizer
        eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
        gen_eos = getattr(getattr(policy.model, "generation_config", None), "eos_token_id", None)
        eos |= set(
            gen_eos if isinstance(gen_eos, list) else [gen_eos] if gen_eos is not None else []
        )
        self.eos_ids = frozenset(int(e) for e in eos)
        self.vocab = int(policy.model.get_output_embeddings().weight.shape[0])
        self.max_context = int(getattr(policy.model.config, "max_position_embeddings", 0) or 0)

    # ------------------------------------------------------------------ entry points
    def reset_caches(self) -> None:
        """Empty every trie, so the next search starts cold (its compute counts it alone)."""
        for cache in (self.policy_cache, self.mrm_cache, self.prm_cache):
            if cache is not None:
                cache.clear()

    def chat_prompt_ids(self, prompt: str) -> list[int]:
        """Policy prompt ids of a one-turn chat (chat template with the assistant header)."""
        return chat_prompt_ids(self.policy.tokenizer, prompt)

    def search(
        self,
        prompt_ids: Sequence[int],
        config: SearchConfig | None = None,
        stop_event: threading.Event | None = None,
        **kw: Any,
    ) -> SearchResult:
        """Run a search to the end and return its result (see :meth:`stream` for the arguments)."""
        return self.stream(prompt_ids, config, stop_event, **kw).run()

    def stream(
        self,
        prompt_ids: Sequence[int],
        config: SearchConfig | None = None,
        stop_event: threading.Event | None = None,
        *,
        prompt_text: str | None = None,
        prefill_ids: Sequence[int] = (),
        constraint: Grammar | None = None,
        scorer: Scorer | None = None,
        reward_sees_prefill: bool = False,
    ) -> SearchStream:
        """A streaming search.

        ``prompt_text`` is what the reward model reads as the prompt (required for methods that use
        the MRM or PRM). ``prefill_ids`` are forced after the prompt (a prefilling attack): the policy
        conditions on them; the result does not include them, and the reward models do not read them
        unless ``reward_sees_prefill`` (then they score the prefill and the continuation as one
        response, as a judge reading the whole transcript would).
        """
        cfg = config or SearchConfig()
        ids = [int(t) for t in prompt_ids] + [int(t) for t in prefill_ids]
        if not prompt_ids:
            raise PromptError("the prompt is empty; pass at least one token")
        if self.max_context and len(ids) + cfg.max_new_tokens > self.max_context:
            raise PromptError(
                f"the prompt has {len(ids)} tokens and max_new_tokens is {cfg.max_new_tokens}, more than "
                f"the policy's context of {self.max_context}; shorten the prompt or lower max_new_tokens"
            )
        needs = {"saffron": "mrm", "prm_beam": "prm"}.get(cfg.method)
        if needs == "mrm" and self.mrm is None:
            raise ConfigError("method='saffron' needs a multifurcation reward model; pass mrm=...")
        if needs == "prm" and self.prm is None:
            raise ConfigError("method='prm_beam' needs a process reward model; pass prm=...")
        if (needs or (cfg.method == "best_of_n" and scorer is None)) and prompt_text is None:
            raise ConfigError(
                f"method={cfg.method!r} needs prompt_text: the reward model reads the prompt as text"
            )
        if cfg.method == "best_of_n" and scorer is None and self.mrm is None and self.prm is None:
            raise ConfigError(
                "method='best_of_n' needs a scorer, an MRM or a PRM to rank its samples"
            )
        run = _Run(
            cfg,
            stop_event,
            SearchStats(method=cfg.method),
            IncrementalDecoder(self.policy.tokenizer),
            reward_extra=[int(t) for t in prefill_ids] if reward_sees_prefill else [],
        )
        method = {
            "saffron": self._saffron,
            "best_of_n": self._best_of_n,
            "prm_beam": self._prm_beam,
            "greedy": self._greedy,
        }[cfg.method]
        return SearchStream(
            self._guarded(run, method(run, ids, prompt_text or "", constraint, scorer)), run.stats
        )

    def _guarded(self, run: _Run, gen: Iterator[StreamChunk]) -> Iterator[StreamChunk]:
        try:
            result = yield from gen
        finally:
            for s in run.sessions:
                s.close()
        return result

    # ------------------------------------------------------------------ model calls
    def _session(self, run: _Run, cache: TrieKVCache) -> TrieSession:
        s = TrieSession(cache)
        run.sessions.append(s)
        return s

    def _policy_prefill(self, run: _Run, ids: list[int], sess: TrieSession) -> _Beam:
        before = self.policy_cache.stats.hits
        out = self.policy_cache.prefill(ids, session=sess)
        hits = self.policy_cache.stats.hits - before
        run.stats.cache_hits += hits
        run.stats.cache_misses += out.tokens_computed
        self._account_policy(run, out.tokens_computed, len(ids), prefill=True)
        run.stats.kv_bytes_copied += out.kv_bytes_copied
        return _Beam(pnode=out.nodes[0], ids=[], score=0.0, logits=out.logits[0])

    def _account_policy(self, run: _Run, n: int, ctx_end: int, prefill: bool) -> None:
        run.stats.policy_forwards += 1
        run.stats.policy_tokens += n
        if prefill:
            run.stats.flops_policy += self._flops_policy.forward(n, ctx_end, logits_positions=1)

    def _policy_extend(
        self, run: _Run, parents: list[_Beam], tokens: list[int], sess: TrieSession
    ) -> tuple[list[TrieNode], torch.Tensor]:
        out = self.policy_cache.extend([b.pnode for b in parents], tokens, session=sess)
        run.stats.policy_forwards += 1
        run.stats.policy_tokens += out.tokens_computed
        run.stats.cache_misses += out.tokens_computed
        run.stats.kv_bytes_copied += out.kv_bytes_copied
        seen: set[int] = set()
        for node in out.nodes:
            if id(node) not in seen:
                seen.add(id(node))
                run.stats.flops_policy += self._flops_policy.forward(
                    1, node.depth, logits_positions=1
                )
        run.stats.peak_cache_bytes = max(
            run.stats.peak_cache_bytes, self.policy_cache.current_bytes
        )
        assert out.logits is not None
        return out.nodes, out.logits

    def _mrm_ids(self, ids: Sequence[int]) -> list[int]:
        assert self.mrm is not None
        if self.mrm.token_map is None:
            return list(ids)
        return self.mrm.token_map[torch.tensor(list(ids), dtype=torch.long)].tolist()

    def _mrm_rewards(self, raw: torch.Tensor, unseen: float) -> torch.Tensor:
        """Reward vectors indexed by policy token id, unseen tokens masked."""
        assert self.mrm is not None
        r = self.mrm.mask_unseen(raw, unseen)
        if self.mrm.token_map is not None:
            r = r[:, self.mrm.token_map[: self.vocab]]
        return r

    def _reward_prefill(
        self,
        run: _Run,
        cache: TrieKVCache,
        flops: FlopsModel,
        ids: list[int],
        sess: TrieSession,
        hidden: bool,
    ) -> Any:
        out = cache.prefill(ids, session=sess, want_hidden=hidden)
        run.stats.reward_tokens += out.tokens_computed
        run.stats.flops_reward += flops.forward(out.tokens_computed, len(ids), logits_positions=1)
        return out

    def _reward_extend(
        self,
        run: _Run,
        cache: TrieKVCache,
        flops: FlopsModel,
        parents: list[TrieNode],
        tokens: list[int],
        sess: TrieSession,
        hidden: bool,
    ) -> Any:
        out = cache.extend(
            parents, tokens, session=sess, want_logits=not hidden, want_hidden=hidden
        )
        run.stats.reward_tokens += out.tokens_computed
        run.stats.reward_forwards += len(tokens)
        for node in {id(n): n for n in out.nodes}.values():
            run.stats.flops_reward += flops.forward(1, node.depth, logits_positions=1)
        return out

    # ------------------------------------------------------------------ shared helpers
    def _banned(self, run: _Run, beam: _Beam) -> torch.Tensor | None:
        ban = None
        if len(beam.ids) < run.config.min_new_tokens and self.eos_ids:
            ban = torch.zeros(beam.logits.shape[-1], dtype=torch.bool)  # type: ignore[union-attr]
            ban[list(self.eos_ids)] = True
        if beam.constraint is not None:
            allowed = beam.constraint.allowed()
            width = beam.logits.shape[-1]  # type: ignore[union-attr]
            grammar_ban = torch.ones(width, dtype=torch.bool)
            grammar_ban[: allowed.shape[0]] = ~allowed[:width]
            ban = grammar_ban if ban is None else ban | grammar_ban
        return ban

    def _ends(self, run: _Run, ids: list[int]) -> bool:
        if ids and ids[-1] in self.eos_ids:
            return True
        if run.config.stop:
            text = decode(self.policy.tokenizer, ids)
            return any(s in text for s in run.config.stop)
        return False

    def _final_text(self, run: _Run, ids: list[int]) -> str:
        text = final_text(self.policy.tokenizer, ids)
        for s in run.config.stop:
            i = text.find(s)
            if i >= 0:
                text = text[:i]
        return text

    def _stopped(self, run: _Run) -> bool:
        if is_stopped(run.stop_event):
            run.stats.stopped = True
            run.stats.stop_reason = "stop event set"
            return True
        return False

    def _commit(self, run: _Run, live: Sequence[list[int]]) -> Iterator[StreamChunk]:
        """Yield tokens that every live sequence agrees on beyond what was committed."""
        n = _common_prefix(live)
        if n > run.committed:
            new = live[0][run.committed : n]
            run.committed = n
            if run.stats.time_to_first_commit_s is None:
                run.stats.time_to_first_commit_s = time.perf_counter() - run.t0
            yield StreamChunk(new, run.decoder.push(new), run.stats.steps)

    def _finish(self, run: _Run, best: Hypothesis, pool: list[Hypothesis]) -> Iterator[StreamChunk]:
        rest = best.token_ids[run.committed :]
        if rest:
            if run.stats.time_to_first_commit_s is None:
                run.stats.time_to_first_commit_s = time.perf_counter() - run.t0
            text = run.decoder.push(rest)
            run.committed = len(best.token_ids)
            yield StreamChunk(rest, text, run.stats.steps)
        tail = run.decoder.finish()
        if tail:
            yield StreamChunk([], tail, run.stats.steps)
        run.stats.wall_s = time.perf_counter() - run.t0
        return SearchResult(
            text=best.text,
            token_ids=best.token_ids,
            score=best.score,
            finished=best.finished,
            pool=pool,
            stats=run.stats,
        )

    def _hyp(self, run: _Run, beam: _Beam, score: float) -> Hypothesis:
        return Hypothesis(
            token_ids=list(beam.ids),
            score=float(score),
            finished=beam.finished,
            text=self._final_text(run, beam.ids),
        )

    # ------------------------------------------------------------------ Saffron
    def _saffron(
        self,
        run: _Run,
        ids: list[int],
        prompt_text: str,
        constraint: Grammar | None,
        scorer: Scorer | None,
    ) -> Iterator[StreamChunk]:
        assert self.mrm is not None and self.mrm_cache is not None and self._flops_mrm is not None
        cfg = run.config
        psess, rsess = self._session(run, self.policy_cache), self._session(run, self.mrm_cache)
        root = self._policy_prefill(run, ids, psess)
        rout = self._reward_prefill(
            run,
            self.mrm_cache,
            self._flops_mrm,
            self.mrm.template.prompt_ids(self.mrm.tokenizer, prompt_text)
            + self._mrm_ids(run.reward_extra),
            rsess,
            False,
        )
        root.rnode, root.rewards = (
            rout.nodes[0],
            self._mrm_rewards(rout.logits, cfg.unseen_reward)[0],
        )
        root.constraint = constraint.start() if constraint else None
        run.stats.reward_forwards += 1
        frontier: list[_Beam] = [root]
        pool: list[_Beam] = []  # finished hypotheses (default) / carried finished beams (faithful)
        eos_masked = bool(
            self.mrm.unseen_mask is not None
            and any(
                bool(self.mrm.unseen_mask[e])
                for e in self.eos_ids
                if e < self.mrm.unseen_mask.shape[0]
            )
        )
        for step in range(cfg.max_new_tokens):
            last = (
                step == cfg.max_new_tokens - 1
            )  # the final frontier is never expanded: skip its forward
            if self._stopped(run):
                break
            active = [b for b in frontier if not b.finished]
            if not active:
                break
            run.stats.steps += 1
            run.stats.expanded_nodes += len(active)
            cand_beam, cand_tok, cand_r = [], [], []
            for bi, b in enumerate(active):
                toks, _ = nucleus(b.logits, cfg.top_p, self._banned(run, b))  # type: ignore[arg-type]
                r = b.rewards[toks].clone()  # type: ignore[index]
                if not cfg.faithful and (not self.mrm.eos_supervised or eos_masked):
                    for j, t in enumerate(toks.tolist()):
                        if t in self.eos_ids:
                            r[j] = b.score  # the last token's reward stands for an unsupervised EOS
                cand_beam.append(torch.full_like(toks, bi))
                cand_tok.append(toks)
                cand_r.append(r)
            beams_t, toks_t, rew_t = torch.cat(cand_beam), torch.cat(cand_tok), torch.cat(cand_r)
            order = torch.argsort(rew_t, descending=True, stable=True)
            if cfg.faithful:
                chosen = order[: cfg.budget].tolist()
                children: list[_Beam] = []
                for j in chosen:
                    parent, t, rew = active[int(beams_t[j])], int(toks_t[j]), float(rew_t[j])
                    child = _Beam(
                        pnode=parent.pnode,
                        ids=parent.ids + [t],
                        score=rew,
                        rnode=parent.rnode,
                        constraint=parent.constraint,
                    )
                    child.finished = self._ends(run, child.ids)
                    child.rank = rew if child.finished else parent.rank
                    child.parent = parent
                    children.append(child)
                carried = [b for b in frontier if b.finished]
                nxt = sorted(carried + children, key=lambda b: b.rank, reverse=True)[: cfg.budget]
                grow = [b for b in nxt if not b.finished and b in children]
                self._expand(run, [] if last else grow, psess, rsess)
                frontier = nxt
                live = [b.ids for b in frontier]
            else:
                new_frontier: list[_Beam] = []
                for rank_i, j in enumerate(order.tolist()):
                    if len(new_frontier) >= cfg.budget:
                        break
                    parent, t, rew = active[int(beams_t[j])], int(toks_t[j]), float(rew_t[j])
                    child = _Beam(
                        pnode=parent.pnode,
                        ids=parent.ids + [t],
                        score=rew,
                        rnode=parent.rnode,
                        constraint=parent.constraint,
                    )
                    if self._ends(run, child.ids):
                        if rank_i < cfg.budget:  # as HF: only top-ranked finished hypotheses count
                            child.finished = True
                            pool.append(child)
                        continue
                    child.parent = parent
                    new_frontier.append(child)
                pool = sorted(pool, key=lambda b: b.score, reverse=True)[: cfg.budget]
                if len(pool) >= cfg.budget:
                    new_frontier = []  # enough finished hypotheses (HF early stopping)
                self._expand(run, [] if last else new_frontier, psess, rsess)
                frontier = new_frontier
                live = [b.ids for b in frontier] + [b.ids for b in pool]
            psess.set_live([b.pnode for b in frontier + pool])
            rsess.set_live([b.rnode for b in frontier + pool if b.rnode is not None])
            if cfg.max_commit_lag is not None:
                frontier, pool, live = self._prune_lag(run, frontier, pool, live)
            yield from self._commit(run, live)
        if cfg.faithful:
            finals = frontier
            best_b = max(finals, key=lambda b: b.rank) if finals else root
            best = self._hyp(run, best_b, best_b.rank if best_b.finished else best_b.score)
            pool_h = [self._hyp(run, b, b.rank) for b in finals if b.finished]
        else:
            pool_h = [self._hyp(run, b, b.score) for b in pool]
            if pool_h:
                best = max(pool_h, key=lambda h: h.score)
            else:
                cands = frontier or [root]
                best_b = max(cands, key=lambda b: b.score)
                best = self._hyp(run, best_b, best_b.score)
        self._fill_cache_stats(run)
        return (yield from self._finish(run, best, pool_h))

    def _expand(
        self, run: _Run, beams: list[_Beam], psess: TrieSession, rsess: TrieSession
    ) -> None:
        """Compute policy logits and MRM rewards of new frontier beams (one batched forward each)."""
        if not beams:
            return
        parents = [b.parent for b in beams]
        tokens = [b.ids[-1] for b in beams]
        pnodes, logits = self._policy_extend(run, parents, tokens, psess)  # type: ignore[arg-type]
        rparents = [p.rnode for p in parents]  # type: ignore[union-attr]
        rout = self._reward_extend(
            run,
            self.mrm_cache,
            self._flops_mrm,
            rparents,  # type: ignore[arg-type]
            self._mrm_ids(tokens),
            rsess,
            False,
        )
        rewards = self._mrm_rewards(rout.logits, run.config.unseen_reward)
        for i, b in enumerate(beams):
            b.pnode, b.rnode = pnodes[i], rout.nodes[i]
            b.logits, b.rewards, b.parent = logits[i], rewards[i], None
            if b.constraint is not None:
                b.constraint = b.constraint.fork()
                b.constraint.advance(tokens[i])

    def _prune_lag(
        self, run: _Run, frontier: list[_Beam], pool: list[_Beam], live: list[list[int]]
    ) -> tuple[list[_Beam], list[_Beam], list[list[int]]]:
        """Keep only the best beam's subtree while the frontier runs too far ahead of the agreed prefix."""
        cfg = run.config
        assert cfg.max_commit_lag is not None
        while live and max(len(x) for x in live) - _common_prefix(live) > cfg.max_commit_lag:
            everyone = frontier + pool
            best = max(everyone, key=lambda b: b.rank if cfg.faithful and b.finished else b.score)
            key = best.ids[: _common_prefix(live) + 1]
            frontier = [b for b in frontier if b.ids[: len(key)] == key]
            pool = [b for b in pool if b.ids[: len(key)] == key]
            live = [b.ids for b in frontier] + [b.ids for b in pool]
        return frontier, pool, live

    def _fill_cache_stats(self, run: _Run) -> None:
        run.stats.peak_cache_bytes = max(
            run.stats.peak_cache_bytes, self.policy_cache.stats.peak_bytes
        )

    # ------------------------------------------------------------------ greedy
    def _greedy(
        self,
        run: _Run,
        ids: list[int],
        prompt_text: str,
        constraint: Grammar | None,
        scorer: Scorer | None,
    ) -> Iterator[StreamChunk]:
        psess = self._session(run, self.policy_cache)
        beam = self._policy_prefill(run, ids, psess)
        beam.constraint = constraint.start() if constraint else None
        for step in range(run.config.max_new_tokens):
            last = step == run.config.max_new_tokens - 1
            if self._stopped(run):
                break
            run.stats.steps += 1
            run.stats.expanded_nodes += 1
            toks, _ = nucleus(beam.logits, 1e-9, self._banned(run, beam))  # type: ignore[arg-type]
            t = int(toks[0])
            beam.ids = beam.ids + [t]
            if self._ends(run, beam.ids):
                beam.finished = True
                break
            if last:
                yield from self._commit(run, [beam.ids])
                break
            nodes, logits = self._policy_extend(run, [beam], [t], psess)
            node = nodes[0]
            beam.pnode, beam.logits = node, logits[0]
            if beam.constraint is not None:
                beam.constraint.advance(t)
            psess.set_live([node])
            yield from self._commit(run, [beam.ids])
        self._fill_cache_stats(run)
        return (yield from self._finish(run, self._hyp(run, beam, 0.0), []))

    # ------------------------------------------------------------------ Best-of-N
    def _best_of_n(
        self,
        run: _Run,
        ids: list[int],
        prompt_text: str,
        constraint: Grammar | None,
        scorer: Scorer | None,
    ) -> Iterator[StreamChunk]:
        cfg = run.config
        gen = torch.Generator().manual_seed(cfg.seed)
        psess = self._session(run, self.policy_cache)
        root = self._policy_prefill(run, ids, psess)
        samples = [
            _Beam(
                pnode=root.pnode,
                ids=[],
                score=0.0,
                logits=root.logits,
                constraint=constraint.start() if constraint else None,
            )
            for _ in range(cfg.num_samples)
        ]
        for step in range(cfg.max_new_tokens):
            last = (
                step == cfg.max_new_tokens - 1
            )  # the final frontier is never expanded: skip its forward
            if self._stopped(run):
                break
            active = [s for s in samples if not s.finished]
            if not active:
                break
            run.stats.steps += 1
            run.stats.expanded_nodes += len(active)
            grow, tokens = [], []
            for s in active:
                if cfg.temperature == 0:
                    t = int(nucleus(s.logits, 1e-9, self._banned(run, s))[0][0])  # type: ignore[arg-type]
                else:
                    toks, probs = nucleus(
                        s.logits / cfg.temperature, cfg.top_p, self._banned(run, s)
                    )  # type: ignore[operator]
                    t = int(toks[torch.multinomial(probs / probs.sum(), 1, generator=gen)])
                s.ids = s.ids + [t]
                if self._ends(run, s.ids):
                    s.finished = True
                else:
                    grow.append(s)
                    tokens.append(t)
            if grow and not last:
                nodes, logits = self._policy_extend(run, grow, tokens, psess)
                for i, s in enumerate(grow):
                    s.pnode, s.logits = nodes[i], logits[i]
                    if s.constraint is not None:
                        s.constraint = s.constraint.fork()
                        s.constraint.advance(tokens[i])
            psess.set_live([s.pnode for s in samples])
        scores = self._score_samples(run, samples, prompt_text, scorer)
        pool = [self._hyp(run, s, sc) for s, sc in zip(samples, scores, strict=True)]
        best = max(pool, key=lambda h: h.score)
        self._fill_cache_stats(run)
        return (yield from self._finish(run, best, pool))

    def _score_samples(
        self, run: _Run, samples: list[_Beam], prompt_text: str, scorer: Scorer | None
    ) -> list[float]:
        if scorer is not None:
            out = [float(scorer(prompt_text, s.ids)) for s in samples]
            run.stats.reward_forwards += sum(len(s.ids) for s in samples)
            run.stats.flops_reward += float(getattr(scorer, "flops_per_token", 0.0)) * sum(
                len(s.ids) for s in samples
            )
            return out
        if self.prm is not None:  # a judge: margin at the last token of each sample
            assert self.prm_cache is not None and self._flops_prm is not None
            sess = self._session(run, self.prm_cache)
            pre = self.prm.prefix_ids(prompt_text) + run.reward_extra
            out = []
            for s in samples:
                o = self._reward_prefill(
                    run, self.prm_cache, self._flops_prm, pre + s.ids, sess, True
                )
                run.stats.reward_forwards += len(s.ids)
                out.append(float(self.prm.margin(o.hidden)[0]))
            return out
        assert self.mrm is not None and self.mrm_cache is not None and self._flops_mrm is not None
        sess = self._session(run, self.mrm_cache)
        pre = self.mrm.template.prompt_ids(self.mrm.tokenizer, prompt_text) + self._mrm_ids(
            run.reward_extra
        )
        out = []
        for s in samples:  # MRM reward of each sample's last token given its prefix
            o = self._reward_prefill(
                run, self.mrm_cache, self._flops_mrm, pre + self._mrm_ids(s.ids[:-1]), sess, False
            )
            run.stats.reward_forwards += len(s.ids)
            out.append(
                float(self._mrm_rewards(o.logits, run.config.unseen_reward)[0, s.ids[-1]])
                if s.ids
                else 0.0
            )
        return out

    # ------------------------------------------------------------------ PRM beam
    def _prm_beam(
        self,
        run: _Run,
        ids: list[int],
        prompt_text: str,
        constraint: Grammar | None,
        scorer: Scorer | None,
    ) -> Iterator[StreamChunk]:
        assert self.prm is not None and self.prm_cache is not None and self._flops_prm is not None
        cfg = run.config
        psess, qsess = self._session(run, self.policy_cache), self._session(run, self.prm_cache)
        root = self._policy_prefill(run, ids, psess)
        root.rnode = self._reward_prefill(
            run,
            self.prm_cache,
            self._flops_prm,
            self.prm.prefix_ids(prompt_text) + run.reward_extra,
            qsess,
            True,
        ).nodes[0]
        root.constraint = constraint.start() if constraint else None
        frontier, pool = [root], []
        for step in range(cfg.max_new_tokens):
            last = (
                step == cfg.max_new_tokens - 1
            )  # the final frontier is never expanded: skip its forward
            if self._stopped(run) or not frontier:
                break
            run.stats.steps += 1
            run.stats.expanded_nodes += len(frontier)
            parents, toks = [], []
            for b in frontier:
                cand, _ = nucleus(b.logits, 1.0, self._banned(run, b))  # type: ignore[arg-type]
                for t in cand[: cfg.prm_children].tolist():
                    parents.append(b)
                    toks.append(int(t))
            out = self._reward_extend(
                run, self.prm_cache, self._flops_prm, [p.rnode for p in parents], toks, qsess, True
            )
            margins = self.prm.margin(out.hidden)
            order = torch.argsort(margins, descending=True, stable=True).tolist()
            new_frontier = []
            for rank_i, j in enumerate(order):
                if len(new_frontier) >= cfg.budget:
                    break
                p = parents[j]
                child = _Beam(
                    pnode=p.pnode,
                    ids=p.ids + [toks[j]],
                    score=float(margins[j]),
                    rnode=out.nodes[j],
                    constraint=p.constraint,
                )
                if self._ends(run, child.ids):
                    if rank_i < cfg.budget:
                        child.finished = True
                        pool.append(child)
                    continue
                child.parent = p
                new_frontier.append(child)
            pool = sorted(pool, key=lambda b: b.score, reverse=True)[: cfg.budget]
            if len(pool) >= cfg.budget:
                new_frontier = []
            if new_frontier and not last:
                ps = [b.parent for b in new_frontier]
                nodes, logits = self._policy_extend(
                    run, ps, [b.ids[-1] for b in new_frontier], psess
                )  # type: ignore[arg-type]
                for i, b in enumerate(new_frontier):
                    b.pnode, b.logits, b.parent = nodes[i], logits[i], None
                    if b.constraint is not None:
                        b.constraint = b.constraint.fork()
                        b.constraint.advance(b.ids[-1])
            frontier = new_frontier
            psess.set_live([b.pnode for b in frontier + pool])
            qsess.set_live([b.rnode for b in frontier + pool if b.rnode is not None])
            live = [b.ids for b in frontier] + [b.ids for b in pool]
            if cfg.max_commit_lag is not None:
                frontier, pool, live = self._prune_lag(run, frontier, pool, live)
            yield from self._commit(run, live)
        pool_h = [self._hyp(run, b, b.score) for b in pool]
        if pool_h:
            best = max(pool_h, key=lambda h: h.score)
        else:
            b = max(frontier or [root], key=lambda x: x.score)
            best = self._hyp(run, b, b.score)
        self._fill_cache_stats(run)
        return (yield from self._finish(run, best, pool_h))
