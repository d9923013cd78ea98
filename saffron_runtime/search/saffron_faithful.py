"""Saffron as the reference code runs it (``faithful=True``), quirks kept on purpose.

Three differences from :class:`Saffron`: EOS stays in the unseen mask (no reward substitution, so
every finished beam scores ``unseen_reward``); finished beams are carried in the frontier and
ranked with the children by ``rank`` (a finished beam's reward, a live beam's last finished
ancestor's); the answer is the best-ranked final beam, which, with ties, is the first finished.
"""

from __future__ import annotations

import torch

from saffron_runtime.search.beam import Beam
from saffron_runtime.search.filters import RewardFilter
from saffron_runtime.search.frontier import Candidates
from saffron_runtime.search.objective import Objective, RewardObjective
from saffron_runtime.search.result import Hypothesis
from saffron_runtime.search.saffron import Saffron


class SaffronFaithful(Saffron):
    """Saffron with the reference code's finished-beam handling (ranked by reward alone)."""

    @property
    def objective(self) -> Objective:
        return RewardObjective()

    def make_reward_filters(self) -> list[RewardFilter]:
        return []  # the reference scores EOS with the MRM as is (unseen when masked)

    def select(
        self, frontier: list[Beam], pool: list[Beam], cands: Candidates
    ) -> tuple[list[Beam], list[Beam], list[Beam]]:
        """The top ``budget`` children, merged with the carried finished beams by ``rank``."""
        budget = self.config.budget
        order = torch.argsort(cands.scores, descending=True, stable=True)
        children: list[Beam] = []
        for j in order[:budget].tolist():
            child = cands.child(j)
            child.parent = cands.parents[j]
            child.finished = self.run.ends(child.ids)
            child.rank = child.score if child.finished else child.parent.rank
            children.append(child)
        carried = [b for b in frontier if b.finished]
        nxt = sorted(carried + children, key=lambda b: b.rank, reverse=True)[:budget]
        grow = [b for b in nxt if not b.finished and b in children]
        return nxt, pool, grow

    def prune_key(self, beam: Beam) -> float:
        return beam.rank if beam.finished else beam.score

    def pick(
        self, root: Beam, frontier: list[Beam], pool: list[Beam]
    ) -> tuple[Hypothesis, list[Hypothesis]]:
        """The best-ranked final beam; the pool is the finished beams of the final frontier."""
        best = max(frontier, key=lambda b: b.rank) if frontier else root
        answer = self.run.hypothesis(best, best.rank if best.finished else best.score)
        return answer, [self.run.hypothesis(b, b.rank) for b in frontier if b.finished]
