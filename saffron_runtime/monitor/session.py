"""One monitored stream: incremental scoring with its own KV cache, stable re-tokenisation of text,
the decision rule, and a hold-back buffer that releases only text the monitor has cleared.

Text path: received text is re-tokenised from the last committed token boundary; a token is
committed only when it lies in a pre-tokenizer piece that later text can no longer change (every
piece but the last two), because byte-level BPE never merges across pieces. So any chunking of a
text gives the same tokens (and scores) as feeding it whole. Bytes chunks are decoded incrementally,
so a split inside a multi-byte character is fine. ``finish()`` flushes the tail.

Long texts: the backbone sees at most its context (``max_position_embeddings``). Tokens are run in
blocks of at most ``_BLOCK``; when the cache is full, it is rebuilt from the prompt prefix and the
last half-context of response tokens (a sliding window), so memory and time per token stay bounded
however long the text is. The slide happens at fixed token counts, so chunking invariance holds. A
prompt longer than half the context keeps its last half-context tokens (a warning is logged).

Faults (a forward that raises, a NaN or inf score) go through :mod:`saffron_runtime.monitor.faults`:
a ``monitor-failed`` verdict, or with ``fail_open`` a logged warning and the rest passed unjudged.
"""

from __future__ import annotations

import codecs
import logging
import threading
from typing import Protocol

import torch
from transformers import DynamicCache

from saffron_runtime.errors import Verdict
from saffron_runtime.monitor.faults import MonitorFault, checked_scores, encodable, fault_verdict
from saffron_runtime.monitor.model import SCMMonitorModel
from saffron_runtime.monitor.rules import MonitorRule, RuleState

_HOLD_PIECES = 2
_BLOCK = 1024  # tokens per forward: bounds the attention's memory for a long text fed at once

log = logging.getLogger(__name__)


class MonitorSession(Protocol):
    """What every monitor adapter's per-stream session offers."""

    verdict: Verdict | None

    def feed_text(self, text: str | bytes) -> Verdict | None:
        """Add produced text; return a verdict if the rule fired."""
        ...

    def finish(self) -> Verdict | None:
        """The stream ended: score what is left; return a verdict if the rule fired."""
        ...

    def release(self) -> str:
        """Text cleared since the last call (safe to show)."""
        ...


class SCMSession:
    """A stream watched by an :class:`SCMMonitorModel` (one single- or few-token forward per commit)."""

    def __init__(
        self,
        model: SCMMonitorModel,
        prompt: str,
        *,
        rule: MonitorRule | None = None,
        hold_back: int | None = None,
        lock: threading.Lock | None = None,
        fail_open: bool = False,
        max_text_chars: int = 65_536,
    ) -> None:
        self.model = model
        self.rule = rule or model.rule
        self.hold_back = model.hold_back if hold_back is None else hold_back
        self.state = RuleState(self.rule)
        self.verdict: Verdict | None = None
        self.token_scores: list[float] = []
        self.response_scores: list[float] = []
        self._lock = lock
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._text = ""  # all response text received
        self._ids: list[int] = []  # committed response token ids
        self._ends: list[int] = []  # char offset where each committed token's text ends
        self._committed_chars = 0
        self._released_chars = 0
        self.fail_open = fail_open
        self.max_text_chars = max_text_chars
        self.passing = False  # a fail-open fault happened: the rest passes unjudged
        self._limit = model.context_tokens
        self._cached: list[int] = []  # response ids in the cache (after the prefix)
        self._cache = DynamicCache(config=model.backbone.config)
        self._pos = 0
        self._prefix: list[int] = []
        try:
            self._prefix = self._fit_prompt(model.prefix_ids(encodable(prompt)))
            self._prefill_prompt()
        except Exception as e:  # noqa: BLE001 - a fault is a verdict by policy
            self._fault(e)

    def _prefill_prompt(self) -> None:
        """Run the prompt's prefix through the monitor's own backbone (the session's KV cache)."""
        self._forward_all(self._prefix)

    def _fit_prompt(self, prefix: list[int]) -> list[int]:
        """The prompt prefix, cut to its last half-context tokens when longer (logged)."""
        half = self._limit // 2
        if len(prefix) > half:
            log.warning(
                "the prompt is %d monitor tokens, past half the monitor's context (%d): it judges "
                "the response against the prompt's last %d tokens",
                len(prefix), self._limit, half,
            )
            return prefix[-half:]
        return prefix

    # -------------------------------------------------------------- model
    def _forward(self, ids: list[int]) -> torch.Tensor:
        """One cached forward of ``ids`` (at most a block); the last-layer hidden states."""
        t = torch.tensor([ids], device=self.model.device)
        pos = torch.arange(self._pos, self._pos + len(ids), device=self.model.device).unsqueeze(0)
        with torch.no_grad():
            if self._lock is not None:
                with self._lock:
                    hidden, self._cache = self.model.hidden_states(
                        t, past_key_values=self._cache, position_ids=pos
                    )
            else:
                hidden, self._cache = self.model.hidden_states(
                    t, past_key_values=self._cache, position_ids=pos
                )
        self._pos += len(ids)
        return hidden[0]

    def _forward_all(self, ids: list[int]) -> None:
        for i in range(0, len(ids), _BLOCK):
            self._forward(ids[i : i + _BLOCK])

    def _rebuild(self, keep: list[int]) -> None:
        """A fresh cache holding the prefix and then ``keep`` (the window's response ids)."""
        self._cache = DynamicCache(config=self.model.backbone.config)
        self._pos = 0
        self._forward_all(self._prefix + list(keep))
        self._cached = list(keep)

    def _run(self, ids: list[int]) -> tuple[list[float], list[float]]:
        """Score response ids block by block, sliding the window when the cache is full."""
        tok: list[float] = []
        resp: list[float] = []
        i = 0
        while i < len(ids):
            if self._pos >= self._limit:
                self._rebuild(self._cached[-((self._limit - len(self._prefix)) // 2) :])
            block = ids[i : i + min(_BLOCK, self._limit - self._pos)]
            hidden = self._forward(block)
            self._cached.extend(block)
            t, r = self.model.head_scores(hidden)
            tok += checked_scores(t.tolist(), "the monitor's token head")
            resp += checked_scores(r.tolist(), "the monitor's response head")
            i += len(block)
        return tok, resp

    def _drop(self, n: int) -> None:
        """Remove the last ``n`` response tokens from the cache view."""
        if n <= len(self._cached):
            if n:
                self._cache.crop(-n)
            self._pos -= n
            del self._cached[len(self._cached) - n :]
        else:  # they reach back before the last slide: rebuild the window
            window = self._ids[-((self._limit - len(self._prefix)) // 2) :] if self._ids else []
            self._rebuild(window)

    def _fault(self, error: BaseException) -> Verdict | None:
        self.verdict = fault_verdict(
            error, name="scm", fail_open=self.fail_open, position=len(self._ids)
        )
        self.passing = self.verdict is None
        return self.verdict

    def rollback(self, n: int) -> None:
        """Forget the last ``n`` committed tokens (``crop(-n)``), e.g. when a producer retracts text."""
        if n <= 0:
            return
        n = min(n, len(self._ids))
        del self._ids[-n:], self._ends[-n:], self.token_scores[-n:], self.response_scores[-n:]
        self._drop(n)
        self._committed_chars = self._ends[-1] if self._ends else 0

    # -------------------------------------------------------------- feeding
    def feed_ids(self, ids: list[int], texts: list[str] | None = None) -> Verdict | None:
        """Feed tokens of the monitor's own tokenizer (a producer sharing it skips re-tokenisation)."""
        if self.verdict is not None or self.passing or not ids:
            return self.verdict
        if texts is None:
            texts = [self.model.tokenizer.decode([i]) for i in ids]
        start = len(self._ids)
        try:
            tok_s, resp_s = self._run(list(ids))
        except Exception as e:  # noqa: BLE001 - a fault is a verdict by policy
            return self._fault(e)
        for i, (tid, piece, ts, rs) in enumerate(zip(ids, texts, tok_s, resp_s, strict=True)):
            begin = self._committed_chars
            self._committed_chars += len(piece)
            if len(self._text) < self._committed_chars:
                self._text += piece
            self._ids.append(int(tid))
            self._ends.append(self._committed_chars)
            self.token_scores.append(ts)
            self.response_scores.append(rs)
            fired, s = self.state.update(ts, rs)
            if fired:
                self.verdict = Verdict(
                    unsafe=True,
                    rule=self.rule.name,
                    score=float(s),
                    position=start + i,
                    span=(begin, self._committed_chars),
                    text=piece,
                    reason=f"{self.rule.name} rule fired (theta={self.rule.theta}, k={self.rule.k})",
                )
                # tokens after the firing one in this chunk are dropped from the cache view
                extra = len(ids) - i - 1
                if extra:
                    self._drop(extra)
                return self.verdict
        return None

    def feed_text(self, text: str | bytes) -> Verdict | None:
        """Feed produced text (str, or bytes that may split a UTF-8 character)."""
        if self.verdict is not None:
            return self.verdict
        text = self._utf8.decode(text) if isinstance(text, bytes) else text
        self._text += encodable(text)
        if self.passing:
            return None
        if len(self._text) > self.max_text_chars:
            return self._fault(MonitorFault(
                f"the text is {len(self._text)} characters, past the monitor's max_text_chars="
                f"{self.max_text_chars}: it cannot be judged in bounded time; raise "
                "SCMMonitor(max_text_chars=...) or shorten the text (e.g. summarise a tool result)"
            ))
        return self._commit(final=False)

    def finish(self) -> Verdict | None:
        """Flush the tail (and any incomplete bytes) and score it."""
        if self.verdict is not None:
            return self.verdict
        self._text += self._utf8.decode(b"", final=True)
        return None if self.passing else self._commit(final=True)

    def _commit(self, *, final: bool) -> Verdict | None:
        tail = self._text[self._committed_chars :]
        if not tail:
            return None
        pre = self.model.tokenizer.backend_tokenizer.pre_tokenizer
        pieces = pre.pre_tokenize_str(tail) if pre is not None else [(tail, (0, len(tail)))]
        keep = len(pieces)
        if final:
            cut = len(tail)
        else:
            keep = len(pieces) - _HOLD_PIECES
            if keep <= 0:
                return None
            cut = pieces[keep - 1][1][1]
        stable = tail[:cut]
        if not stable:
            return None
        # tokenise the whole tail, not ``stable`` alone: a piece's split can depend on the text after
        # it (``\s+(?!\S)`` keeps "\n\n" whole at the end of a string but splits it before a word),
        # so only the tokens of the pieces before ``cut`` are taken, by their pre-tokenizer piece
        enc = self.model.tokenizer(tail, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        if not final:
            words = enc.word_ids()
            n = sum(1 for w in words if w is not None and w < keep)
            ids, offsets = ids[:n], offsets[:n]
        texts, prev = [], 0
        for j, (_, end) in enumerate(offsets):
            end = cut if j == len(offsets) - 1 else min(end, cut)
            texts.append(stable[prev:end])
            prev = end
        return self.feed_ids(ids, texts)

    # -------------------------------------------------------------- hold-back
    def release(self) -> str:
        """Cleared text: tokens scored clean, minus the last ``hold_back`` of them; never past a verdict."""
        if self.passing:  # failed open: everything received passes
            out = self._text[self._released_chars :]
            self._released_chars = len(self._text)
            return out
        if self.verdict is not None:
            limit = self.verdict.position - self.hold_back
        else:
            limit = len(self._ids) - self.hold_back
        end = self._ends[limit - 1] if limit > 0 else 0
        if end <= self._released_chars:
            return ""
        out = self._text[self._released_chars : end]
        self._released_chars = end
        return out

    def release_all(self) -> str:
        """After a clean finish: everything not yet released."""
        if self.verdict is not None or self.passing:
            return self.release()
        out = self._text[self._released_chars : self._committed_chars]
        self._released_chars = self._committed_chars
        return out

    @property
    def tokens_seen(self) -> int:
        """Response tokens scored so far."""
        return len(self._ids)
