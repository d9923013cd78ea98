"""Batching across requests: the concurrent ``extend`` calls of many searches become one forward.

A server runs each request's search in its own thread. A :class:`StepBatcher` is attached to the
tries of one replica (``TrieKVCache.batcher``); a thread that has joined it (:meth:`StepBatcher.member`)
no longer runs its ``extend`` at once: the call is queued on its trie, and when every member that
is stepping has a call queued (or a short window has passed since the queue opened), one thread
runs a single ``extend`` over the union of the queued calls and hands each caller its own rows.

Scheduling, all under one condition:
- a member is *parked* while its call waits or runs, *computing* between calls (ranking, commits,
  the monitor), *new* until its first call (its prompt prefill is not batched);
- a trie's queue is due when no member is computing (everyone who will come is here), when it
  holds ``max_batch`` calls, or when its oldest call has waited ``window_s`` (a straggler);
- of the due queues the fullest runs (oldest first on a tie), one batch at a time per batcher.
Parked members of another trie's queue do not hold a queue back, so searches that fall out of
step (one at its policy forward, one at its reward forward) fall back into step at once.

Exactness: each caller's rows are the rows its own ``extend`` would return (the trie computes a
node from its path alone), and its ``tokens_computed`` / ``kv_bytes_copied`` are what its own call
would have cost, so per-request stats do not see the batch. Nodes are pinned in each caller's
session before the batch's references are dropped, so eviction never takes a row in flight.
A thread that is not a member runs its ``extend`` directly, as before.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from saffron_runtime.cache.node import StepOutput, TrieNode
from saffron_runtime.errors import ConfigError

if TYPE_CHECKING:
    from saffron_runtime.cache.trie import TrieKVCache, TrieSession

_NEW, _COMPUTING, _PARKED = "new", "computing", "parked"
_IDLE_POLL_S = 0.05  # a waiter re-checks this often while another batch runs


@dataclass
class _Call:
    """One member's queued ``extend``: its inputs, and its output or error once the batch ran."""

    trie: TrieKVCache
    parents: Sequence[TrieNode]
    tokens: Sequence[int]
    session: TrieSession | None
    want_logits: bool
    want_hidden: bool
    thread: int
    queued_at: float = field(default_factory=time.monotonic)
    out: StepOutput | None = None
    error: BaseException | None = None
    done: bool = False


class StepBatcher:
    """Merges the concurrent ``extend`` calls of member threads, per trie, into one forward."""

    def __init__(self, *, window_s: float = 0.02, max_batch: int = 8) -> None:
        if window_s < 0:
            raise ConfigError(f"window_s={window_s} must be >= 0 seconds")
        if max_batch < 1:
            raise ConfigError(f"max_batch={max_batch} must be at least 1 request per forward")
        self.window_s = window_s
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._members: dict[int, str] = {}
        self._queues: dict[int, list[_Call]] = {}
        self._running = False
        self._idle_since = time.monotonic()
        self.batches = 0
        """Merged forwards run (a batch of one call counts too)."""
        self.calls = 0
        """Member ``extend`` calls served."""

    # ------------------------------------------------------------------ attaching and membership
    def attach(self, *tries: TrieKVCache | None) -> None:
        """Route the members' ``extend`` calls on these tries through this batcher."""
        for trie in tries:
            if trie is not None and trie.batcher is not self:
                if trie.batcher is not None:
                    raise ConfigError("this trie already has a step batcher; attach one per model")
                trie.batcher = self

    def is_member(self) -> bool:
        """Whether the calling thread's ``extend`` calls are batched."""
        return threading.get_ident() in self._members

    @contextmanager
    def member(self) -> Iterator[None]:
        """The calling thread's search is batched while inside (a run joins when admitted and leaves
        when it ends, so no batch ever waits for a run that is not stepping)."""
        me = threading.get_ident()
        with self._cond:
            if me in self._members:
                raise ConfigError("this thread is already a member of the step batcher")
            self._members[me] = _NEW
        try:
            yield
        finally:
            with self._cond:
                self._members.pop(me, None)
                self._cond.notify_all()

    @property
    def active(self) -> int:
        """Members now (runs admitted and not yet finished)."""
        return len(self._members)

    # ------------------------------------------------------------------ the call
    def extend(
        self,
        trie: TrieKVCache,
        parents: Sequence[TrieNode],
        tokens: Sequence[int],
        *,
        session: TrieSession | None,
        want_logits: bool,
        want_hidden: bool,
    ) -> StepOutput:
        """Queue a member's ``extend`` on ``trie`` and return its rows once a batch has run it."""
        me = threading.get_ident()
        call = _Call(trie, parents, tokens, session, want_logits, want_hidden, me)
        with self._cond:
            self._members[me] = _PARKED
            self._queues.setdefault(id(trie), []).append(call)
            self._cond.notify_all()
            while not call.done:
                batch = None if self._running else self._due_batch()
                if batch is None:
                    self._cond.wait(self._wait_s())
                    continue
                self._running = True
                self._cond.release()
                try:
                    _run(batch)
                finally:
                    self._cond.acquire()
                    self._finished(batch)
        if call.error is not None:
            raise call.error
        assert call.out is not None
        return call.out

    # ------------------------------------------------------------------ scheduling (under _cond)
    def _due_batch(self) -> list[_Call] | None:
        """Take the batch to run now, or None when every queue should wait a little longer."""
        now = time.monotonic()
        computing = any(state == _COMPUTING for state in self._members.values())
        best: list[_Call] | None = None
        for queue in self._queues.values():
            if not queue:
                continue
            opened = max(queue[0].queued_at, self._idle_since)
            due = not computing or len(queue) >= self.max_batch or now - opened >= self.window_s
            if due and (best is None or len(queue) > len(best)
                        or (len(queue) == len(best) and queue[0].queued_at < best[0].queued_at)):
                best = queue
        if best is None:
            return None
        batch, best[:] = best[: self.max_batch], best[self.max_batch :]
        return batch

    def _wait_s(self) -> float:
        """How long a waiter may sleep before a queue can become due by its window."""
        if self._running:
            return _IDLE_POLL_S
        now = time.monotonic()
        heads = [max(q[0].queued_at, self._idle_since) for q in self._queues.values() if q]
        if not heads:
            return _IDLE_POLL_S
        return max(1e-4, min(heads) + self.window_s - now)

    def _finished(self, batch: list[_Call]) -> None:
        """A batch ran: its callers compute again, and the next batch may start."""
        for c in batch:
            c.done = True
            if c.thread in self._members:
                self._members[c.thread] = _COMPUTING
        self._running = False
        self._idle_since = time.monotonic()
        self.batches += 1
        self.calls += len(batch)
        self._cond.notify_all()


def _run(batch: list[_Call]) -> None:
    """One ``extend`` over the batch's calls (all on one trie); each call gets its rows or the error."""
    trie = batch[0].trie
    try:
        if len(batch) == 1:
            c = batch[0]
            c.out = trie.extend_now(c.parents, c.tokens, session=c.session,
                                    want_logits=c.want_logits, want_hidden=c.want_hidden)
            return
        _run_merged(trie, batch)
    except BaseException as e:  # noqa: BLE001 - every caller of the batch re-raises it
        for c in batch:
            c.error = e


def _run_merged(trie: TrieKVCache, batch: list[_Call]) -> None:
    from saffron_runtime.cache.trie import TrieSession

    parents = [p for c in batch for p in c.parents]
    tokens = [int(t) for c in batch for t in c.tokens]
    want_logits = any(c.want_logits for c in batch)
    want_hidden = any(c.want_hidden for c in batch)
    with trie.lock:
        held = TrieSession(trie)  # the batch's rows stay pinned until each caller pins its own
        out = trie.extend_now(parents, tokens, session=held, want_logits=want_logits,
                              want_hidden=want_hidden)
        per_token = trie.pool.bytes_per_token if trie.pool is not None else 0
        start = 0
        for c in batch:
            end = start + len(c.parents)
            nodes = out.nodes[start:end]
            if c.session is not None:
                c.session.pin(nodes)
            unique = {(id(p), int(t)) for p, t in zip(c.parents, c.tokens, strict=True)}
            width = max(p.depth for p in c.parents)
            c.out = StepOutput(
                nodes=nodes,
                logits=out.logits[start:end] if c.want_logits and out.logits is not None else None,
                hidden=out.hidden[start:end] if c.want_hidden and out.hidden is not None else None,
                tokens_computed=len(unique),
                kv_bytes_copied=len(unique) * width * per_token,
            )
            start = end
        held.close()
