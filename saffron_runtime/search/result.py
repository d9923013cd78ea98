"""What a search returns: the answer, its score, the finished pool, and the compute it took."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class StreamChunk:
    """Newly committed tokens and the text they complete (may be empty mid-character)."""

    token_ids: list[int]
    text: str
    step: int = 0  # search steps completed when these tokens were committed


@dataclass
class SearchStats:
    """Compute accounting; reward forwards count one per (sequence, new token), however batched."""

    method: str = ""
    steps: int = 0
    policy_forwards: int = 0
    policy_tokens: int = 0
    reward_forwards: int = 0
    reward_tokens: int = 0
    expanded_nodes: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    peak_cache_bytes: int = 0
    kv_bytes_copied: int = 0
    flops_policy: float = 0.0
    flops_reward: float = 0.0
    wall_s: float = 0.0
    time_to_first_commit_s: float | None = None
    flagged_beams: int = 0  # beams pruned because the monitor flagged them (prune_flagged_beams)
    stopped: bool = False
    stop_reason: str = ""

    @property
    def flops(self) -> float:
        """Total analytic FLOPs of every model involved."""
        return self.flops_policy + self.flops_reward

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy, with total FLOPs."""
        return {**asdict(self), "flops": self.flops}


@dataclass
class Hypothesis:
    """One finished (or final-frontier) beam."""

    token_ids: list[int]
    score: float
    finished: bool
    text: str = ""


@dataclass
class SearchResult:
    """The chosen answer plus everything a caller may want to report."""

    text: str
    token_ids: list[int]
    score: float
    finished: bool
    pool: list[Hypothesis] = field(default_factory=list)
    stats: SearchStats = field(default_factory=SearchStats)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly copy."""
        return {
            "text": self.text,
            "token_ids": self.token_ids,
            "score": self.score,
            "finished": self.finished,
            "pool": [asdict(h) for h in self.pool],
            "stats": self.stats.to_dict(),
        }
