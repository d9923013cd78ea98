"""Best-of-N, the sampling baseline: draw N responses from the policy, keep the best by a scorer,
the PRM (a judge reading each response) or the MRM (the reward of each response's last token)."""

from __future__ import annotations

import torch

from saffron_runtime.cache import TrieSession
from saffron_runtime.search.beam import Beam
from saffron_runtime.search.filters import Nucleus, Temperature, UnseenRewardMask
from saffron_runtime.search.greedy import GREEDY_TOP_P
from saffron_runtime.search.method import SearchMethod, SearchSteps


class BestOfN(SearchMethod):
    """N independent samples (temperature, top-p), ranked once they are complete."""

    def prepare(self) -> None:
        cfg = self.config
        if cfg.temperature == 0:  # greedy samples (all alike), as HF's do_sample=False
            self.sampler = Nucleus(GREEDY_TOP_P, self.bans())
        else:
            self.sampler = Nucleus(cfg.top_p, [Temperature(cfg.temperature), *self.bans()])

    def search(self) -> SearchSteps:
        run, cfg = self.run, self.config
        sess = run.session(self.engine.policy_cache)
        root = run.policy_prefill(self.prompt_ids, sess)
        assert root.logits is not None
        generator = torch.Generator(device=root.logits.device).manual_seed(cfg.seed)
        samples = [
            Beam(
                pnode=root.pnode,
                ids=[],
                score=0.0,
                logits=root.logits,
                constraint=self.start_constraint(),
            )
            for _ in range(cfg.num_samples)
        ]
        for step in range(cfg.max_new_tokens):
            if run.stopped():
                break
            active = [s for s in samples if not s.finished]
            if not active:
                break
            run.stats.steps += 1
            run.stats.expanded_nodes += len(active)
            self.sample_step(active, generator, sess, last=self.is_last(step))
            sess.set_live([s.pnode for s in samples])
        scores = self.score(samples)
        pool = [run.hypothesis(s, score) for s, score in zip(samples, scores, strict=True)]
        best = max(pool, key=lambda h: h.score)
        return (yield from run.finish(best, pool))

    def sample_step(
        self, active: list[Beam], generator: torch.Generator, sess: TrieSession, *, last: bool
    ) -> None:
        """Draw one token for every active sample; run the policy on those that go on."""
        grow: list[Beam] = []
        tokens: list[int] = []
        for sample in active:
            token_ids, probs = self.sampler(sample, sample.logits)  # type: ignore[arg-type]
            if self.config.temperature == 0:
                token = int(token_ids[0])
            else:
                pick = torch.multinomial(probs / probs.sum(), 1, generator=generator)
                token = int(token_ids[pick])
            sample.ids = sample.ids + [token]
            if self.run.ends(sample.ids):
                sample.finished = True
            else:
                grow.append(sample)
                tokens.append(token)
        if not grow or last:
            return
        nodes, logits = self.run.policy_extend(grow, tokens, sess)
        for i, sample in enumerate(grow):
            sample.pnode, sample.logits = nodes[i], logits[i]
            if sample.constraint is not None:
                sample.constraint = sample.constraint.fork()
                sample.constraint.advance(tokens[i])

    def score(self, samples: list[Beam]) -> list[float]:
        """Each sample's score; one reward forward is counted per (sample, token)."""
        if self.scorer is not None:
            return self.score_with_scorer(samples)
        if self.engine.prm is not None:
            return self.score_with_prm(samples)
        return self.score_with_mrm(samples)

    def score_with_scorer(self, samples: list[Beam]) -> list[float]:
        """The caller's scorer; its compute is its ``flops_per_token`` (0 when unknown)."""
        assert self.scorer is not None
        stats = self.run.stats
        scores = [float(self.scorer(self.prompt_text, s.ids)) for s in samples]
        n_tokens = sum(len(s.ids) for s in samples)
        stats.reward_forwards += n_tokens
        stats.flops_reward += float(getattr(self.scorer, "flops_per_token", 0.0)) * n_tokens
        return scores

    def score_with_prm(self, samples: list[Beam]) -> list[float]:
        """A judge: the PRM's margin at the last token of each sample."""
        run, engine = self.run, self.engine
        prm = engine.prm
        assert prm is not None and engine.prm_cache is not None and engine.flops_prm is not None
        sess = run.session(engine.prm_cache)
        prefix = prm.prefix_ids(self.prompt_text) + run.reward_extra
        scores = []
        for s in samples:
            out = run.reward_prefill(engine.prm_cache, engine.flops_prm, prefix + s.ids, sess, True)
            run.stats.reward_forwards += len(s.ids)
            assert out.hidden is not None
            scores.append(float(prm.margin(out.hidden)[0]))
        return scores

    def score_with_mrm(self, samples: list[Beam]) -> list[float]:
        """The MRM's reward of each sample's last token given its prefix (0 for an empty one)."""
        run, engine = self.run, self.engine
        mrm = engine.mrm
        assert mrm is not None and engine.mrm_cache is not None and engine.flops_mrm is not None
        rewards_of = UnseenRewardMask(mrm, engine.vocab, self.config.unseen_reward)
        sess = run.session(engine.mrm_cache)
        prefix = mrm.template.prompt_ids(mrm.tokenizer, self.prompt_text)
        prefix = prefix + run.mrm_ids(run.reward_extra)
        scores = []
        for s in samples:
            out = run.reward_prefill(
                engine.mrm_cache, engine.flops_mrm, prefix + run.mrm_ids(s.ids[:-1]), sess, False
            )
            run.stats.reward_forwards += len(s.ids)
            assert out.logits is not None
            scores.append(float(rewards_of(out.logits)[0, s.ids[-1]]) if s.ids else 0.0)
        return scores
