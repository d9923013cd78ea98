"""Search: Saffron with conservative exploration, and baselines at equal compute."""

from saffron_runtime.search.config import SearchConfig
from saffron_runtime.search.engine import SearchEngine, SearchStream, StreamChunk
from saffron_runtime.search.prm import ProcessRewardModel
from saffron_runtime.search.result import Hypothesis, SearchResult, SearchStats

__all__ = [
    "Hypothesis",
    "ProcessRewardModel",
    "SearchConfig",
    "SearchEngine",
    "SearchResult",
    "SearchStats",
    "SearchStream",
    "StreamChunk",
]
