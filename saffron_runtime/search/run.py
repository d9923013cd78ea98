"""The state of one search request and the accounting of every model call it makes.

A :class:`SearchRun` owns the request's trie sessions, its :class:`SearchStats`, the streaming
decoder and what has been committed. Methods call the models only through it, so every forward is
counted the same way (policy and reward forwards, tokens, cache hits and misses, FLOPs, bytes).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch

from saffron_runtime.cache import StepOutput, TrieKVCache, TrieNode, TrieSession
from saffron_runtime.cancel import is_stopped
from saffron_runtime.models.flops import FlopsModel
from saffron_runtime.search.beam import Beam, common_prefix
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.decode import IncrementalDecoder, final_text
from saffron_runtime.search.filters import EosStop, StopStrings
from saffron_runtime.search.flagging import FLAGGED, BeamMonitor
from saffron_runtime.search.result import Hypothesis, SearchResult, SearchStats, StreamChunk

if TYPE_CHECKING:
    from saffron_runtime.search.engine import SearchEngine


class SearchRun:
    """Per-request state: sessions on the tries, stats, commit tracking and the model calls."""

    def __init__(
        self,
        engine: SearchEngine,
        config: SearchConfig,
        stop_event: threading.Event | None,
        *,
        reward_extra: Sequence[int] = (),
        beam_monitor: BeamMonitor | None = None,
    ) -> None:
        self.engine = engine
        self.beam_monitor = beam_monitor  # prunes flagged beams (only when the config asks)
        self.config = config
        self.stop_event = stop_event
        self.stats = SearchStats(method=config.method)
        self.decoder = IncrementalDecoder(engine.policy.tokenizer)
        self.sessions: list[TrieSession] = []
        self.committed = 0  # tokens already streamed
        self.t0 = time.perf_counter()
        self.reward_extra = [int(t) for t in reward_extra]  # prefill ids the reward models read
        self.eos_stop = EosStop(engine.eos_ids)
        self.stop_strings = StopStrings(engine.policy.tokenizer, config.stop)

    # ------------------------------------------------------------------ sessions
    def session(self, cache: TrieKVCache) -> TrieSession:
        """A session on ``cache`` that :meth:`close` releases."""
        sess = TrieSession(cache)
        self.sessions.append(sess)
        return sess

    def close(self) -> None:
        """Release every node this request pinned."""
        for sess in self.sessions:
            sess.close()

    # ------------------------------------------------------------------ policy calls
    def policy_prefill(self, ids: list[int], sess: TrieSession) -> Beam:
        """Run the prompt through the policy; the root beam of the search."""
        cache, stats = self.engine.policy_cache, self.stats
        out = cache.prefill(ids, session=sess)
        stats.cache_hits += out.hits  # this call's own hits, also when other searches run at once
        stats.cache_misses += out.tokens_computed
        stats.policy_forwards += 1
        stats.policy_tokens += out.tokens_computed
        stats.flops_policy += self.engine.flops_policy.forward(
            out.tokens_computed, len(ids), logits_positions=1
        )
        stats.kv_bytes_copied += out.kv_bytes_copied
        assert out.logits is not None
        return Beam(pnode=out.nodes[0], ids=[], score=0.0, logits=out.logits[0])

    def policy_extend(
        self, parents: list[Beam], tokens: list[int], sess: TrieSession
    ) -> tuple[list[TrieNode], torch.Tensor]:
        """One batched policy forward of ``tokens[i]`` after ``parents[i]``: nodes and logits."""
        cache, stats = self.engine.policy_cache, self.stats
        out = cache.extend([b.pnode for b in parents], tokens, session=sess)
        stats.policy_forwards += 1
        stats.policy_tokens += out.tokens_computed
        stats.cache_misses += out.tokens_computed
        stats.kv_bytes_copied += out.kv_bytes_copied
        for node in _distinct(out.nodes):
            stats.flops_policy += self.engine.flops_policy.forward(
                1, node.depth, logits_positions=1
            )
        stats.peak_cache_bytes = max(stats.peak_cache_bytes, cache.current_bytes)
        assert out.logits is not None
        return out.nodes, out.logits

    # ------------------------------------------------------------------ reward calls
    def reward_prefill(
        self,
        cache: TrieKVCache,
        flops: FlopsModel,
        ids: list[int],
        sess: TrieSession,
        hidden: bool,
    ) -> StepOutput:
        """Run a reward model over ``ids`` (logits, or last hidden states when ``hidden``)."""
        out = cache.prefill(ids, session=sess, want_hidden=hidden)
        self.stats.reward_tokens += out.tokens_computed
        self.stats.flops_reward += flops.forward(out.tokens_computed, len(ids), logits_positions=1)
        return out

    def reward_extend(
        self,
        cache: TrieKVCache,
        flops: FlopsModel,
        parents: list[TrieNode],
        tokens: list[int],
        sess: TrieSession,
        hidden: bool,
    ) -> StepOutput:
        """One batched reward forward; counts one reward forward per (sequence, new token)."""
        out = cache.extend(
            parents, tokens, session=sess, want_logits=not hidden, want_hidden=hidden
        )
        self.stats.reward_tokens += out.tokens_computed
        self.stats.reward_forwards += len(tokens)
        for node in _distinct(out.nodes):
            self.stats.flops_reward += flops.forward(1, node.depth, logits_positions=1)
        return out

    def mrm_ids(self, ids: Sequence[int]) -> list[int]:
        """Policy token ids in the MRM's vocabulary."""
        mrm = self.engine.mrm
        assert mrm is not None
        if mrm.token_map is None:
            return list(ids)
        index = torch.tensor(list(ids), dtype=torch.long, device=mrm.token_map.device)
        return mrm.token_map[index].tolist()

    # ------------------------------------------------------------------ ending and streaming
    def ends(self, ids: list[int]) -> bool:
        """Whether a beam with these response ids has ended (EOS or a stop string)."""
        return self.eos_stop(ids) or self.stop_strings(ids)

    def stopped(self) -> bool:
        """Whether the caller's stop event is set (recorded in the stats)."""
        if is_stopped(self.stop_event):
            self.stats.stopped = True
            self.stats.stop_reason = "stop event set"
            return True
        return False

    def commit(self, live: Sequence[list[int]]) -> Iterator[StreamChunk]:
        """Yield the tokens every live sequence agrees on beyond what was committed."""
        n = common_prefix(live)
        if n > self.committed:
            new = live[0][self.committed : n]
            self.committed = n
            self._first_commit()
            yield StreamChunk(new, self.decoder.push(new), self.stats.steps)

    def hypothesis(self, beam: Beam, score: float) -> Hypothesis:
        """The result form of a beam, its text cut at a stop string."""
        text = self.stop_strings.truncate(final_text(self.engine.policy.tokenizer, beam.ids))
        return Hypothesis(
            token_ids=list(beam.ids), score=float(score), finished=beam.finished, text=text
        )

    def finish(
        self, best: Hypothesis, pool: list[Hypothesis]
    ) -> Iterator[StreamChunk]:  # a generator that returns the SearchResult
        """Stream what the chosen answer adds to the committed tokens, then return the result."""
        self.stats.peak_cache_bytes = max(
            self.stats.peak_cache_bytes, self.engine.policy_cache.stats.peak_bytes
        )
        rest = best.token_ids[self.committed :]
        if rest:
            self._first_commit()
            text = self.decoder.push(rest)
            self.committed = len(best.token_ids)
            yield StreamChunk(rest, text, self.stats.steps)
        tail = self.decoder.finish()
        if tail:
            yield StreamChunk([], tail, self.stats.steps)
        self.stats.wall_s = time.perf_counter() - self.t0
        return SearchResult(
            text=best.text,
            token_ids=best.token_ids,
            score=best.score,
            finished=best.finished,
            pool=pool,
            stats=self.stats,
        )

    def flagged(self) -> Iterator[StreamChunk]:  # a generator that returns the SearchResult
        """End closed: every live beam was flagged, so nothing more is committed; the result holds
        only the text already streamed (each of its tokens was cleared on every live beam)."""
        self.stats.stopped = True
        self.stats.stop_reason = FLAGGED
        self.stats.wall_s = time.perf_counter() - self.t0
        yield from ()
        return SearchResult(
            text=self.decoder.emitted,
            token_ids=list(self.decoder.ids),
            score=float("-inf"),
            finished=False,
            stats=self.stats,
        )

    def _first_commit(self) -> None:
        if self.stats.time_to_first_commit_s is None:
            self.stats.time_to_first_commit_s = time.perf_counter() - self.t0


def _distinct(nodes: list[TrieNode]) -> list[TrieNode]:
    """Nodes without repeats, first occurrence order (identical pairs are computed once)."""
    return list({id(n): n for n in nodes}.values())
