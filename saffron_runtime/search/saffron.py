"""Saffron: rank every nucleus child of the frontier by one MRM forward per node.

The multifurcation reward model scores all next tokens of a node at once, so a step costs one
reward forward per frontier node (PRM beam search needs one per child). Never-supervised tokens
get ``unseen_reward`` (conservative exploration), and an EOS the MRM cannot score takes its
parent's score. Finished hypotheses follow Hugging Face's rule (see :mod:`.frontier`).
"""

from __future__ import annotations

import torch

from saffron_runtime.search.beam import Beam
from saffron_runtime.search.filters import (
    EosRewardSubstitution,
    Nucleus,
    RewardFilter,
    UnseenRewardMask,
    UnseenRewardSubstitution,
    WithinPrefixShrinkage,
)
from saffron_runtime.search.frontier import Candidates, FrontierSearch


class Saffron(FrontierSearch):
    """Saffron with the default finished-beam rule."""

    def prepare(self) -> None:
        mrm = self.engine.mrm
        assert mrm is not None and self.engine.mrm_cache is not None
        self.mrm = mrm
        self.children = Nucleus(self.config.top_p, self.bans())
        self.rewards_of = UnseenRewardMask(mrm, self.engine.vocab, self.config.unseen_reward)
        self.reward_filters = self.make_reward_filters()

    def eos_is_masked(self) -> bool:
        """Whether the MRM's unseen mask covers an EOS token."""
        mask = self.mrm.unseen_mask
        return bool(
            mask is not None
            and any(bool(mask[e]) for e in self.engine.eos_ids if e < mask.shape[0])
        )

    def make_reward_filters(self) -> list[RewardFilter]:
        """EOS reward substitution when the MRM cannot score EOS itself; with ``within_prefix_weight``
        under 1 every child's reward is shrunk toward its seen siblings' mean (unseen ones take the
        mean), else unseen tokens take their parent's score when ``unseen_from_parent`` is set
        (``SaffronFaithful`` uses none of these)."""
        filters: list[RewardFilter] = []
        if self.config.within_prefix_weight < 1.0:
            mask = self.policy_unseen_mask() if self.mrm.unseen_mask is not None else None
            filters.append(WithinPrefixShrinkage(mask, self.config.within_prefix_weight))
        elif self.config.unseen_from_parent and self.mrm.unseen_mask is not None:
            filters.append(
                UnseenRewardSubstitution(
                    self.policy_unseen_mask(), siblings_cap=self.config.unseen_siblings_cap
                )
            )
        if not self.mrm.eos_supervised or self.eos_is_masked():
            filters.append(EosRewardSubstitution(self.engine.eos_ids))
        return filters

    def policy_unseen_mask(self) -> torch.Tensor:
        """The MRM's unseen mask indexed by policy token id."""
        mask = self.mrm.unseen_mask
        assert mask is not None
        if self.mrm.token_map is not None:
            return mask[self.mrm.token_map[: self.engine.vocab].to(mask.device)]
        return mask[: self.engine.vocab]

    def start(self) -> Beam:
        run, engine = self.run, self.engine
        assert engine.mrm_cache is not None and engine.flops_mrm is not None
        self.policy_session = run.session(engine.policy_cache)
        self.reward_session = run.session(engine.mrm_cache)
        root = run.policy_prefill(self.prompt_ids, self.policy_session)
        reward_prompt = self.mrm.template.prompt_ids(self.mrm.tokenizer, self.prompt_text)
        out = run.reward_prefill(
            engine.mrm_cache,
            engine.flops_mrm,
            reward_prompt + run.mrm_ids(run.reward_extra),
            self.reward_session,
            False,
        )
        assert out.logits is not None
        root.rnode, root.rewards = out.nodes[0], self.rewards_of(out.logits)[0]
        root.constraint = self.start_constraint()
        run.stats.reward_forwards += 1
        return root

    def candidates(self, active: list[Beam]) -> Candidates:
        parents: list[Beam] = []
        child_tokens: list[torch.Tensor] = []
        child_rewards: list[torch.Tensor] = []
        child_probs: list[torch.Tensor] = []
        for beam in active:
            token_ids, probs = self.children(beam, beam.logits)  # type: ignore[arg-type]
            rewards = beam.rewards[token_ids]  # type: ignore[index]
            for reward_filter in self.reward_filters:
                rewards = reward_filter(beam, token_ids, rewards, probs)
            parents.extend([beam] * len(token_ids))
            child_tokens.append(token_ids)
            child_rewards.append(rewards)
            child_probs.append(probs)
        tokens = torch.cat(child_tokens).tolist()  # one copy to the host per step, not one per beam
        return self.ranked(parents, tokens, torch.cat(child_rewards), torch.cat(child_probs).log())

    def expand(self, beams: list[Beam]) -> None:
        """Policy logits and MRM rewards of new frontier beams (one batched forward each)."""
        if not beams:
            return
        run, engine = self.run, self.engine
        assert engine.mrm_cache is not None and engine.flops_mrm is not None
        reward_parents = [b.rnode for b in beams]  # still the parents' nodes
        tokens = [b.ids[-1] for b in beams]
        self.expand_policy(beams)
        out = run.reward_extend(
            engine.mrm_cache,
            engine.flops_mrm,
            reward_parents,  # type: ignore[arg-type]
            run.mrm_ids(tokens),
            self.reward_session,
            False,
        )
        assert out.logits is not None
        rewards = self.rewards_of(out.logits)
        for i, b in enumerate(beams):
            b.rnode, b.rewards = out.nodes[i], rewards[i]
