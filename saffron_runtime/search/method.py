"""The interface every search method implements (one class per file, chosen by the registry)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Generator

from saffron_runtime.constraints import ConstraintState, Grammar
from saffron_runtime.search.filters import (
    EosBan,
    GrammarBan,
    LogitsFilter,
    NoRepeatNGram,
    RepetitionPenalty,
)
from saffron_runtime.search.result import SearchResult, StreamChunk
from saffron_runtime.search.run import SearchRun

Scorer = Callable[[str, list[int]], float]
SearchSteps = Generator[StreamChunk, None, SearchResult]


class SearchMethod(ABC):
    """One decoding algorithm over a :class:`SearchRun`.

    ``search()`` is a generator: it yields committed :class:`StreamChunk` s as soon as they are
    final and returns the :class:`SearchResult`. The stop event is checked once per step.
    """

    def __init__(
        self,
        run: SearchRun,
        prompt_ids: list[int],
        prompt_text: str,
        constraint: Grammar | None,
        scorer: Scorer | None,
    ) -> None:
        self.run = run
        self.engine = run.engine
        self.config = run.config
        self.prompt_ids = prompt_ids
        self.prompt_text = prompt_text
        self.constraint = constraint
        self.scorer = scorer
        self.prepare()

    def prepare(self) -> None:  # noqa: B027 - an optional hook, empty by default
        """Set up what the method needs from the engine and config (filters, models); no forward."""

    @abstractmethod
    def search(self) -> SearchSteps:
        """Run the search, yielding committed chunks; return the result."""

    def start_constraint(self) -> ConstraintState | None:
        """A fresh grammar state for the root beam (None without a grammar)."""
        return self.constraint.start() if self.constraint is not None else None

    def bans(self) -> list[LogitsFilter]:
        """The filters every method applies to the policy's logits: EOS ban, repetition penalty and
        repeated n-gram ban (when set), then grammar ban."""
        bans: list[LogitsFilter] = [EosBan(self.engine.eos_ids, self.config.min_new_tokens)]
        if self.config.repetition_penalty != 1.0:
            bans.append(RepetitionPenalty(self.config.repetition_penalty))
        if self.config.no_repeat_ngram_size:
            bans.append(NoRepeatNGram(self.config.no_repeat_ngram_size))
        return [*bans, GrammarBan()]

    def is_last(self, step: int) -> bool:
        """Whether ``step`` is the final one: its frontier is never expanded, so skip the forward."""
        return step == self.config.max_new_tokens - 1
