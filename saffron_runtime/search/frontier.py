"""The step Saffron and PRM beam search share: rank candidates, keep the best, expand, commit.

Each step (1) ranks every candidate child of the frontier by its score, (2) walks them best first:
a child that ends goes to the pool of finished hypotheses (as Hugging Face's beam search, only a
child ranked within the top ``budget`` counts, the pool keeps the ``budget`` best, and the search
stops once it is full), any other child joins the next frontier until it holds ``budget``,
(3) expands the new frontier (one batched forward per model), (4) pins what is live, prunes
while the frontier runs more than ``max_commit_lag`` tokens ahead of the agreed prefix, and
commits the agreed prefix. The final pick is the pool's best, else the frontier's best.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field

import torch

from saffron_runtime.cache import TrieNode, TrieSession
from saffron_runtime.search.beam import Beam, common_prefix
from saffron_runtime.search.method import SearchMethod, SearchSteps
from saffron_runtime.search.objective import Objective, make_objective
from saffron_runtime.search.result import Hypothesis


@dataclass
class Candidates:
    """Candidate children of a frontier: child ``j`` is ``tokens[j]`` after ``parents[j]``.

    ``reward_nodes[j]`` is the child's reward-model node when the scoring forward already made it
    (PRM beam); otherwise the child keeps its parent's until it is expanded (Saffron).
    """

    parents: list[Beam]
    tokens: list[int]
    scores: torch.Tensor
    reward_nodes: list[TrieNode] | None = None
    logprobs: torch.Tensor | None = None  # each child's summed log-probability (its beam's)
    keys: torch.Tensor | None = None  # the objective's ranking keys (None: rank by score)
    _host: tuple[list[float], list[float] | None, list[float]] | None = field(
        default=None, repr=False
    )

    def ranking(self) -> torch.Tensor:
        """What the children are ranked by: the objective's keys, else the scores."""
        return self.keys if self.keys is not None else self.scores

    def host_values(self) -> tuple[list[float], list[float] | None, list[float]]:
        """Scores, log-probabilities and keys as Python floats, copied to the host once per step
        (reading them element by element would wait on the device once per child)."""
        if self._host is None:
            logprobs = self.logprobs.tolist() if self.logprobs is not None else None
            self._host = (self.scores.tolist(), logprobs, self.ranking().tolist())
        return self._host

    def child(self, j: int) -> Beam:
        """Candidate ``j`` as a beam whose own forward has not run yet."""
        parent = self.parents[j]
        scores, logprobs, keys = self.host_values()
        return Beam(
            pnode=parent.pnode,
            ids=parent.ids + [self.tokens[j]],
            score=float(scores[j]),
            rnode=self.reward_nodes[j] if self.reward_nodes is not None else parent.rnode,
            constraint=parent.constraint,
            logprob=float(logprobs[j]) if logprobs is not None else 0.0,
            key=float(keys[j]),
            guard=parent.guard,
        )


class FrontierSearch(SearchMethod):
    """A beam search over a ranked frontier; subclasses give the root, candidates and expansion."""

    policy_session: TrieSession
    reward_session: TrieSession

    @property
    def objective(self) -> Objective:
        """The ranking objective the config names."""
        return make_objective(self.config)

    @abstractmethod
    def start(self) -> Beam:
        """Open the sessions, prefill the prompt on every model and return the root beam."""

    @abstractmethod
    def candidates(self, active: list[Beam]) -> Candidates:
        """Every candidate child of the active beams, with its score."""

    @abstractmethod
    def expand(self, beams: list[Beam]) -> None:
        """Run the new frontier's forwards (its parents are set; they are cleared here)."""

    def search(self) -> SearchSteps:
        """The shared loop (see the module docstring)."""
        run = self.run
        root = self.start()
        if run.beam_monitor is not None:
            root.guard = run.beam_monitor.start()
        frontier: list[Beam] = [root]
        pool: list[Beam] = []
        for step in range(self.config.max_new_tokens):
            if run.stopped():
                break
            active = [b for b in frontier if not b.finished]
            if not active:
                break
            run.stats.steps += 1
            run.stats.expanded_nodes += len(active)
            frontier, pool, grow = self.select(frontier, pool, self.candidates(active))
            grow = [] if self.is_last(step) else grow
            self.expand(grow)
            if run.beam_monitor is not None and grow:
                frontier = self.drop_flagged(frontier, grow)
                if not frontier and not pool:  # nothing unflagged is left: end closed
                    return (yield from run.flagged())
            self.policy_session.set_live([b.pnode for b in frontier + pool])
            self.reward_session.set_live([b.rnode for b in frontier + pool if b.rnode is not None])
            live = [b.ids for b in frontier] + [b.ids for b in pool]
            if self.config.max_commit_lag is not None:
                frontier, pool, live = self.prune_lag(frontier, pool, live)
            yield from run.commit(live)
        best, hypotheses = self.pick(root, frontier, pool)
        return (yield from run.finish(best, hypotheses))

    def select(
        self, frontier: list[Beam], pool: list[Beam], cands: Candidates
    ) -> tuple[list[Beam], list[Beam], list[Beam]]:
        """The next frontier, the finished pool and the beams to expand (HF early stopping)."""
        budget = self.config.budget
        order = torch.argsort(cands.ranking(), descending=True, stable=True).tolist()
        new_frontier: list[Beam] = []
        for rank_i, j in enumerate(order):
            if len(new_frontier) >= budget:
                break
            child = cands.child(j)
            if self.run.ends(child.ids):
                if rank_i < budget:  # as HF: only top-ranked finished hypotheses count
                    child.finished = True
                    pool.append(child)
                continue
            child.parent = cands.parents[j]
            new_frontier.append(child)
        pool = sorted(pool, key=lambda b: b.key, reverse=True)[:budget]
        if len(pool) >= budget:
            new_frontier = []  # enough finished hypotheses
        return new_frontier, pool, new_frontier

    def drop_flagged(self, frontier: list[Beam], grown: list[Beam]) -> list[Beam]:
        """The frontier without the just-expanded beams whose newest token makes the monitor's rule
        fire (scored from the hidden states their forward kept; see :mod:`.flagging`)."""
        monitor = self.run.beam_monitor
        assert monitor is not None
        states, fired = monitor.advance([b.guard for b in grown], [b.pnode for b in grown])
        flagged: set[int] = set()
        for beam, state, hit in zip(grown, states, fired, strict=True):
            beam.guard = state
            if hit:
                flagged.add(id(beam))
        self.run.stats.flagged_beams += len(flagged)
        return [b for b in frontier if id(b) not in flagged] if flagged else frontier

    def prune_key(self, beam: Beam) -> float:
        """What ranks beams when pruning for the commit lag."""
        return beam.key

    def prune_lag(
        self, frontier: list[Beam], pool: list[Beam], live: list[list[int]]
    ) -> tuple[list[Beam], list[Beam], list[list[int]]]:
        """Keep only the best beam's subtree while the frontier runs too far ahead of the agreed prefix."""
        lag = self.config.max_commit_lag
        assert lag is not None
        while live and max(len(x) for x in live) - common_prefix(live) > lag:
            best = max(frontier + pool, key=self.prune_key)
            key = best.ids[: common_prefix(live) + 1]
            frontier = [b for b in frontier if b.ids[: len(key)] == key]
            pool = [b for b in pool if b.ids[: len(key)] == key]
            live = [b.ids for b in frontier] + [b.ids for b in pool]
        return frontier, pool, live

    def pick(
        self, root: Beam, frontier: list[Beam], pool: list[Beam]
    ) -> tuple[Hypothesis, list[Hypothesis]]:
        """The answer (the pool's best, else the frontier's best, else the root) and the pool."""
        hypotheses = [self.run.hypothesis(b, b.score) for b in pool]
        if pool:
            best_i = max(range(len(pool)), key=lambda i: pool[i].key)
            return hypotheses[best_i], hypotheses
        best = max(frontier or [root], key=lambda b: b.key)
        return self.run.hypothesis(best, best.score), hypotheses

    def ranked(
        self,
        parents: list[Beam],
        tokens: list[int],
        rewards: torch.Tensor,
        child_logprobs: torch.Tensor,
        reward_nodes: list[TrieNode] | None = None,
    ) -> Candidates:
        """Candidates with their beams' summed log-probabilities and the objective's keys."""
        parent_logprob = torch.tensor(
            [p.logprob for p in parents], dtype=child_logprobs.dtype, device=child_logprobs.device
        )
        logprobs = parent_logprob + child_logprobs
        length = len(parents[0].ids) + 1 if parents else 1
        keys = self.objective(rewards.float(), logprobs.float(), length)
        return Candidates(parents, tokens, rewards, reward_nodes, logprobs, keys)

    def expand_policy(self, beams: list[Beam]) -> None:
        """The policy forward of new beams: their nodes, logits and grammar states."""
        parents = [b.parent for b in beams]
        tokens = [b.ids[-1] for b in beams]
        nodes, logits = self.run.policy_extend(parents, tokens, self.policy_session)  # type: ignore[arg-type]
        for i, b in enumerate(beams):
            b.pnode, b.logits, b.parent = nodes[i], logits[i], None
            if b.constraint is not None:
                b.constraint = b.constraint.fork()
                b.constraint.advance(tokens[i])
