"""PRM beam search, the baseline: score the top-``prm_children`` children of each frontier node
with one process-reward forward each (the cost Saffron's MRM avoids), keep the best ``budget``."""

from __future__ import annotations

import torch

from saffron_runtime.search.beam import Beam
from saffron_runtime.search.filters import Nucleus
from saffron_runtime.search.frontier import Candidates, FrontierSearch


class PrmBeam(FrontierSearch):
    """Beam search ranked by a process reward model's safety margin."""

    def prepare(self) -> None:
        prm = self.engine.prm
        assert prm is not None and self.engine.prm_cache is not None
        self.prm = prm
        self.children = Nucleus(1.0, self.bans())  # every token, most likely first

    def start(self) -> Beam:
        run, engine = self.run, self.engine
        assert engine.prm_cache is not None and engine.flops_prm is not None
        self.policy_session = run.session(engine.policy_cache)
        self.reward_session = run.session(engine.prm_cache)
        root = run.policy_prefill(self.prompt_ids, self.policy_session)
        root.rnode = run.reward_prefill(
            engine.prm_cache,
            engine.flops_prm,
            self.prm.prefix_ids(self.prompt_text) + run.reward_extra,
            self.reward_session,
            True,
        ).nodes[0]
        root.constraint = self.start_constraint()
        return root

    def candidates(self, active: list[Beam]) -> Candidates:
        """The ``prm_children`` most likely children of each beam, scored by one forward each."""
        engine = self.engine
        assert engine.prm_cache is not None and engine.flops_prm is not None
        parents: list[Beam] = []
        tokens: list[int] = []
        child_probs: list[torch.Tensor] = []
        for beam in active:
            token_ids, probs = self.children(beam, beam.logits)  # type: ignore[arg-type]
            k = self.config.prm_children
            for t in token_ids[:k].tolist():
                parents.append(beam)
                tokens.append(int(t))
            child_probs.append(probs[:k])
        out = self.run.reward_extend(
            engine.prm_cache,
            engine.flops_prm,
            [p.rnode for p in parents],  # type: ignore[misc]
            tokens,
            self.reward_session,
            True,
        )
        assert out.hidden is not None
        margins = self.prm.margin(out.hidden)
        return self.ranked(parents, tokens, margins, torch.cat(child_probs).log(), out.nodes)

    def expand(self, beams: list[Beam]) -> None:
        """Only the policy runs: the children's PRM nodes came with their scores."""
        if beams:
            self.expand_policy(beams)

    def prune_key(self, beam: Beam) -> float:
        # faithful=True has no PRM variant, but the engine has always ranked finished beams by
        # ``rank`` (never set here, so -inf) when pruning under it; kept so outputs do not change.
        return beam.rank if self.config.faithful and beam.finished else beam.key
