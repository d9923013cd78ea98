"""Greedy decoding: the policy's most likely allowed token at each step (no reward model)."""

from __future__ import annotations

from saffron_runtime.search.filters import Nucleus
from saffron_runtime.search.method import SearchMethod, SearchSteps

GREEDY_TOP_P = 1e-9  # a nucleus this small keeps only the most likely token


class Greedy(SearchMethod):
    """Greedy decoding under the EOS and grammar bans."""

    def prepare(self) -> None:
        self.choose = Nucleus(GREEDY_TOP_P, self.bans())

    def search(self) -> SearchSteps:
        run, cfg = self.run, self.config
        sess = run.session(self.engine.policy_cache)
        beam = run.policy_prefill(self.prompt_ids, sess)
        beam.constraint = self.start_constraint()
        for step in range(cfg.max_new_tokens):
            if run.stopped():
                break
            run.stats.steps += 1
            run.stats.expanded_nodes += 1
            token = int(self.choose(beam, beam.logits)[0][0])  # type: ignore[arg-type]
            beam.ids = beam.ids + [token]
            if run.ends(beam.ids):
                beam.finished = True
                break
            if self.is_last(step):
                yield from run.commit([beam.ids])
                break
            nodes, logits = run.policy_extend([beam], [token], sess)
            beam.pnode, beam.logits = nodes[0], logits[0]
            if beam.constraint is not None:
                beam.constraint.advance(token)
            sess.set_live([nodes[0]])
            yield from run.commit([beam.ids])
        return (yield from run.finish(run.hypothesis(beam, 0.0), []))
