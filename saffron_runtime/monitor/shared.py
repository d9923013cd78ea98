"""The heads monitor on the policy's own hidden states: no second forward, no re-tokenisation.

When the monitor's backbone IS the policy model (the bundled heads monitor on SmolLM2: the same
model object, the same tokenizer) and the policy's context is exactly the monitor's prefix (the
chat template of the prompt with the assistant header, no forced prefill), the hidden state the
monitor's heads need at each response token is the one the policy's trie forward already computed
for that token's node. :class:`SharedHiddenSession` asks the trie to keep those hidden states
(:meth:`TrieKVCache.hold_hidden`), walks the committed token ids down the trie and scores them with
the heads: the monitor runs no backbone forward of its own. Where the ids cannot be shared (another
template, a prefill, a LoRA monitor with its own backbone) :func:`open_session` falls back to the
separate path (:class:`SCMSession`, its own KV cache over re-tokenised text).

What the monitor sees on each path:
- shared: the policy's own token ids, exactly as generated. Special tokens (EOS) stay in the
  context but are never scored, as the text path never sees them (they decode to nothing).
- separate: the committed text re-tokenised canonically. When the policy produced a
  non-canonical tokenisation of its text, the two paths score different token sequences; the
  shared one scores what the policy really generated, the sequence the heads were trained on.
The one token that has no hidden state is a response's last (the search never runs a forward past
it): it costs one single-token forward on the policy's trie.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Literal

import torch
from transformers import PreTrainedTokenizerBase

from saffron_runtime.cache import TrieKVCache, TrieNode
from saffron_runtime.errors import ConfigError, Verdict
from saffron_runtime.monitor import faults
from saffron_runtime.monitor.adapters import SCMMonitor, StreamingMonitor
from saffron_runtime.monitor.faults import checked_scores
from saffron_runtime.monitor.model import SCMMonitorModel
from saffron_runtime.monitor.rules import MonitorRule, RuleState
from saffron_runtime.monitor.session import MonitorSession, SCMSession
from saffron_runtime.search.decode import IncrementalDecoder

MonitorPath = Literal["shared", "separate"]


class _NoKV:
    """Stands in for the separate path's KV cache: the shared session keeps none to crop."""

    def crop(self, n: int) -> None:
        """Nothing to forget: hidden states live on the policy's trie nodes."""


class SharedHiddenSession(SCMSession):
    """An :class:`SCMSession` whose hidden states come from the policy's trie (see the module)."""

    def __init__(
        self,
        model: SCMMonitorModel,
        prompt: str,
        cache: TrieKVCache,
        context_ids: Sequence[int],
        *,
        rule: MonitorRule | None = None,
        hold_back: int | None = None,
    ) -> None:
        self._trie = cache
        self._context_ids = [int(t) for t in context_ids]
        self._cursor: TrieNode | None = None  # the node of the last committed token
        self._pending: list[torch.Tensor] = []
        self._special = frozenset(int(t) for t in model.tokenizer.all_special_ids)
        self._decoder = IncrementalDecoder(model.tokenizer)
        self.extra_forwards = 0
        """Single-token policy forwards run for tokens the search never expanded (the last one)."""
        self._held = True
        cache.hold_hidden()  # before the search's first forward: the session opens first
        super().__init__(model, prompt, rule=rule, hold_back=hold_back)
        self._cache = _NoKV()  # type: ignore[assignment]

    # -------------------------------------------------------------- model
    def _prefill_prompt(self) -> None:
        """Nothing to run: the policy's trie already holds the prompt's states."""

    def _run(self, ids: list[int], *, score: bool = True) -> tuple[list[float], list[float]]:
        """Head scores of ``ids`` from the hidden states :meth:`feed_tokens` collected."""
        self._pos += len(ids)
        if not score or not ids:
            return [], []
        hidden = torch.stack(self._pending[: len(ids)])
        self._pending = self._pending[len(ids) :]
        with torch.no_grad():
            tok, resp = self.model.head_scores(hidden)
        return (
            checked_scores(tok.tolist(), "the monitor's token head"),
            checked_scores(resp.tolist(), "the monitor's response head"),
        )

    def _start(self) -> TrieNode:
        node = self._trie.match(self._context_ids)
        if node.depth != len(self._context_ids):  # evicted before the first commit: rebuild it
            node = self._trie.prefill(self._context_ids).nodes[0]
            self.extra_forwards += 1
        return node

    def _advance(self, token: int, *, need_hidden: bool) -> torch.Tensor | None:
        """Move the cursor to ``token``'s node; its hidden state (computed now if missing)."""
        node = self._cursor if self._cursor is not None else self._start()
        child = node.children.get(token)
        if child is None or (need_hidden and child.hidden is None):
            child = self._trie.extend([node], [token], want_logits=False).nodes[0]
            self.extra_forwards += 1
        self._cursor = child
        return child.hidden

    def _piece(self, token: int) -> str:
        """The text ``token`` adds (empty while a multi-byte character is incomplete), from a
        bounded window of ids, so a token's cost does not grow with the response's length."""
        return self._decoder.push([token])

    # -------------------------------------------------------------- feeding
    def feed_tokens(self, token_ids: Sequence[int]) -> Verdict | None:
        """Score committed policy tokens (in order, each once) from their trie nodes."""
        if self.verdict is not None:
            return self.verdict
        ids: list[int] = []
        texts: list[str] = []
        for token in (int(t) for t in token_ids):
            if token in self._special:
                self._advance(token, need_hidden=False)
                continue
            hidden = self._advance(token, need_hidden=True)
            assert hidden is not None
            self._pending.append(hidden)
            ids.append(token)
            texts.append(self._piece(token))
        return self.feed_ids(ids, texts) if ids else None

    def feed_text(self, text: str | bytes) -> Verdict | None:
        """Not for this session: it reads token ids (:meth:`feed_tokens`), never text."""
        raise ConfigError(
            "a shared-hidden-state monitor session scores the policy's token ids: call "
            "feed_tokens(ids), or open a separate session (SCMMonitor.open) to feed text"
        )

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` scored tokens and move the cursor back with them."""
        for _ in range(min(n, len(self._ids))):
            if self._cursor is not None:
                self._cursor = self._cursor.parent
        super().rollback(n)

    def close(self) -> None:
        """Stop asking the trie to keep hidden states (idempotent)."""
        if self._held:
            self._held = False
            self._trie.release_hidden()


class HeadsBeamMonitor:
    """Scores search beams with an SCM monitor's heads from the hidden states on their policy trie
    nodes (the :class:`~saffron_runtime.search.flagging.BeamMonitor` of ``prune_flagged_beams``).

    Each beam's state is a :class:`RuleState` for its own path, so a beam is flagged exactly when
    the streaming monitor's rule would fire on its tokens. Special tokens are not scored (as the
    shared session). It fails closed: a node without a kept hidden state, or a non-finite score,
    flags its beam.
    """

    def __init__(self, model: SCMMonitorModel, rule: MonitorRule) -> None:
        self.model = model
        self.rule = rule
        self._special = frozenset(int(t) for t in model.tokenizer.all_special_ids)

    def start(self) -> RuleState:
        """The root's state: nothing counted yet."""
        return RuleState(self.rule)

    def advance(
        self, states: Sequence[object], nodes: Sequence[TrieNode]
    ) -> tuple[list[object], list[bool]]:
        """Every beam's state after its newest token and whether the rule fired (one heads call)."""
        if len(states) != len(nodes) or not all(isinstance(s, RuleState) for s in states):
            raise ConfigError("HeadsBeamMonitor.advance needs one RuleState (from start()) per node")
        new: list[object] = [dataclasses.replace(s) for s in states]  # type: ignore[type-var]
        rows = [i for i, n in enumerate(nodes) if n.token not in self._special]
        missing = {i for i in rows if nodes[i].hidden is None}
        fired = [i in missing for i in range(len(nodes))]  # no hidden state: fail closed
        rows = [i for i in rows if i not in missing]
        if not rows:
            return new, fired
        with torch.no_grad():
            tok, resp = self.model.head_scores(torch.stack([nodes[i].hidden for i in rows]))
        finite = torch.isfinite(tok) & torch.isfinite(resp)
        for i, t, r, ok in zip(rows, tok.tolist(), resp.tolist(), finite.tolist(), strict=True):
            state = new[i]
            assert isinstance(state, RuleState)
            hit, _ = state.update(t, r) if ok else (True, 0.0)
            fired[i] = hit
        return new, fired


def beam_monitor_for(
    monitor: StreamingMonitor | None,
    prompt: str,
    cache: TrieKVCache,
    tokenizer: PreTrainedTokenizerBase,
    prompt_ids: Sequence[int],
) -> HeadsBeamMonitor | None:
    """The beam monitor of ``monitor`` when its heads can read the policy's own hidden states (the
    conditions of :func:`can_share` on the prompt; a forced prefill is allowed: the heads then read
    states that saw it, as a judge reading the whole transcript would), else None."""
    if not can_share(monitor, prompt, cache, tokenizer, prompt_ids):
        return None
    assert isinstance(monitor, SCMMonitor)
    return HeadsBeamMonitor(monitor.model, monitor.rule)


def can_share(
    monitor: StreamingMonitor | None,
    prompt: str,
    cache: TrieKVCache,
    tokenizer: PreTrainedTokenizerBase,
    context_ids: Sequence[int],
) -> bool:
    """True when ``monitor`` is an SCM monitor whose backbone is the trie's model, with the same
    tokenizer, and the policy's context ids are exactly the monitor's prefix for ``prompt``."""
    if not isinstance(monitor, SCMMonitor):
        return False
    model = monitor.model
    if model.backbone is not cache.model:
        return False
    same_tok = model.tokenizer is tokenizer or (
        model.tokenizer.get_vocab() == tokenizer.get_vocab()
        and model.tokenizer.all_special_ids == tokenizer.all_special_ids
    )
    return same_tok and model.prefix_ids(prompt) == [int(t) for t in context_ids]


def open_session(
    monitor: StreamingMonitor | None,
    prompt: str,
    cache: TrieKVCache,
    tokenizer: PreTrainedTokenizerBase,
    context_ids: Sequence[int],
) -> tuple[MonitorSession | None, MonitorPath | None]:
    """A session for one response and the path it takes: ``"shared"`` (hidden states of the
    policy's trie), ``"separate"`` (the monitor's own forward or scorer), or ``(None, None)``."""
    if monitor is None:
        return None, None
    if can_share(monitor, prompt, cache, tokenizer, context_ids):
        assert isinstance(monitor, SCMMonitor)
        session = SharedHiddenSession(
            monitor.model, prompt, cache, context_ids, rule=monitor.rule, hold_back=monitor.hold_back
        )
        return session, "shared"
    return faults.open_session(monitor, prompt), "separate"  # every fault becomes a verdict
