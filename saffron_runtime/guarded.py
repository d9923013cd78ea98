"""Guarded generation: Saffron search streams committed text, the streaming monitor watches it, and
only text the monitor has cleared leaves. When the monitor fires, the search is stopped at once (its
generator is closed and the stop event set, so no further step runs).

This is the loop ChatSaffron drives for ``invoke``, ``stream`` and ``astream`` alike.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from saffron_runtime.constraints import Grammar
from saffron_runtime.errors import ConfigError, Verdict
from saffron_runtime.monitor.adapters import StreamingMonitor, prompt_checker
from saffron_runtime.monitor.session import MonitorSession
from saffron_runtime.monitor.shared import (
    MonitorPath,
    SharedHiddenSession,
    beam_monitor_for,
    open_session,
)
from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.engine import PRUNING_METHODS, SearchEngine, SearchStream
from saffron_runtime.search.flagging import FLAGGED, BeamMonitor
from saffron_runtime.search.result import SearchResult, SearchStats, StreamChunk


def _flagged_verdict(committed: str) -> Verdict:
    """The verdict of a search that ended because the monitor flagged every live beam."""
    return Verdict(
        unsafe=True,
        rule="beams-flagged",
        score=1.0,
        position=None,
        reason=f"{FLAGGED} (prune_flagged_beams): the search ended closed after "
        f"{len(committed)} committed characters",
    )


class LinkedStopEvent(threading.Event):
    """A stop signal that also counts as set when any linked event is set (a guard callback's, a
    caller's): the search polls ``is_set`` once per step, so it ends within one step of either.
    ``set()`` sets only this event, never the linked ones."""

    def __init__(self, *linked: threading.Event) -> None:
        super().__init__()
        self.linked = tuple(linked)

    def is_set(self) -> bool:
        """True when this event or a linked one is set."""
        return super().is_set() or any(e.is_set() for e in self.linked)


@dataclass
class GuardedOutcome:
    """What a guarded run produced: the released text, the search result, and any verdict."""

    released: str = ""
    result: SearchResult | None = None
    verdict: Verdict | None = None
    committed_text: str = ""
    steps_after_verdict: int = 0
    verdicts: list[Verdict] = field(default_factory=list)
    stats: SearchStats | None = None
    monitor_path: MonitorPath | None = None
    """How the monitor read the stream: "shared" (heads on the policy's own hidden states, no
    second forward), "separate" (its own forward of re-tokenised text, or its own scorer), or None."""

    @property
    def blocked(self) -> bool:
        """True when the monitor stopped the stream."""
        return self.verdict is not None


class GuardedGeneration:
    """Iterate to get released text deltas; ``outcome`` holds the rest once the iteration ends."""

    def __init__(
        self,
        engine: SearchEngine,
        monitor: StreamingMonitor | None,
        prompt_ids: Sequence[int],
        config: SearchConfig,
        *,
        prompt_text: str,
        stop_event: threading.Event | None = None,
        constraint: Grammar | None = None,
        prefill_ids: Sequence[int] = (),
        check_prompt: bool = False,
    ) -> None:
        self.engine = engine
        self.check_prompt = check_prompt  # judge the request with the monitor's prompt head first
        self.prefill_ids = list(
            prefill_ids
        )  # forced after the prompt; the monitor sees what follows
        self.monitor = monitor
        self.prompt_ids = list(prompt_ids)
        self.config = config
        self.prompt_text = prompt_text
        self.stop_event = stop_event or threading.Event()
        self.constraint = constraint
        self.outcome = GuardedOutcome()

    def _prompt_verdict(self) -> Verdict | None:
        check = prompt_checker(self.monitor) if self.check_prompt else None
        return check(self.prompt_text) if check is not None else None

    def __iter__(self) -> Iterator[str]:
        verdict = self._prompt_verdict()
        if verdict is not None:  # refused before a single token is generated
            self.outcome.stats = SearchStats(
                method=self.config.method, stopped=True, stop_reason="prompt"
            )
            self._block(verdict)
            return
        out = self.outcome
        stream, session = self._open_stream()
        shared = session if isinstance(session, SharedHiddenSession) else None
        gen = iter(stream)
        try:
            for chunk in gen:
                out.committed_text += chunk.text
                delta, verdict = self._feed(session, shared, chunk)
                if delta:
                    out.released += delta
                    yield delta
                if verdict is not None:
                    self._block(verdict)
                    return
            if stream.stats.stop_reason == FLAGGED:  # ended closed: nothing more is released
                self._block(_flagged_verdict(out.committed_text))
                return
            if session is not None:
                verdict = session.finish()
                delta = session.release_all() if verdict is None else session.release()
                if delta:
                    out.released += delta
                    yield delta
                if verdict is not None:
                    self._block(verdict)
                    return
        finally:
            gen.close()  # ends the search now if it is still running
            if shared is not None:
                shared.close()
            out.result = stream.result
            if out.verdict is not None:
                out.steps_after_verdict = stream.stats.steps - self._steps_at_verdict

    def _open_stream(self) -> tuple[SearchStream, MonitorSession | None]:
        """Start the search's stream and open the monitor's session on it (shared or separate)."""
        needs_text = self.config.method in ("saffron", "prm_beam", "best_of_n")
        stream = self.engine.stream(
            self.prompt_ids,
            self.config,
            self.stop_event,
            prompt_text=self.prompt_text if needs_text else None,
            constraint=self.constraint,
            prefill_ids=self.prefill_ids,
            beam_monitor=self._beam_monitor(),
        )
        session, self.outcome.monitor_path = open_session(
            self.monitor,
            self.prompt_text,
            self.engine.policy_cache,
            self.engine.policy.tokenizer,
            self.prompt_ids + self.prefill_ids,
        )
        self.outcome.stats = stream.stats
        return stream, session

    @staticmethod
    def _feed(
        session: MonitorSession | None, shared: SharedHiddenSession | None, chunk: StreamChunk
    ) -> tuple[str, Verdict | None]:
        """One committed chunk through the monitor: the text it clears now, and its verdict if it fired."""
        if session is None:  # unwatched: everything committed is released
            return chunk.text, None
        if shared is not None:  # the policy's own ids, scored from its trie's hidden states
            verdict = shared.feed_tokens(chunk.token_ids) if chunk.token_ids else None
        else:
            verdict = session.feed_text(chunk.text) if chunk.text else None
        return session.release(), verdict

    def _beam_monitor(self) -> BeamMonitor | None:
        """The monitor's heads on the policy's hidden states, when the config prunes flagged beams."""
        cfg = self.config
        if not (cfg.prune_flagged_beams and cfg.method in PRUNING_METHODS):
            return None
        beams = beam_monitor_for(
            self.monitor,
            self.prompt_text,
            self.engine.policy_cache,
            self.engine.policy.tokenizer,
            self.prompt_ids,
        )
        if beams is None:
            raise ConfigError(
                "prune_flagged_beams=True needs an SCM monitor whose heads read the policy's own "
                "hidden states (the bundled heads monitor on SmolLM2, with the policy's chat template "
                f"as the prompt); this monitor ({type(self.monitor).__name__}) cannot score beams: "
                "use monitor='bundled' or set prune_flagged_beams=False"
            )
        return beams

    def _block(self, verdict: Verdict) -> None:
        self.stop_event.set()
        self._steps_at_verdict = self.outcome.stats.steps if self.outcome.stats else 0
        self.outcome.verdict = verdict
        self.outcome.verdicts.append(verdict)
