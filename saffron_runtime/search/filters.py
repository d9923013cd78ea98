"""Candidate filters: each decoding constraint is one small object, composed in a list.

In the spirit of Hugging Face's ``LogitsProcessor``: a logits filter maps a beam's next-token
logits to new logits (``-inf`` removes a token), a reward filter maps the rewards of a beam's
candidate children to new rewards, a stop criterion says whether a beam has ended. A method
composes the ones it needs; a new constraint is a new class here, not an edit of every loop.
Every mask is created on the device of the tensor it meets.

Example:
    >>> import torch
    >>> from saffron_runtime.search.beam import Beam
    >>> beam = Beam(pnode=None, ids=[], score=0.0)  # no token yet: EOS (id 2) is banned
    >>> children = Nucleus(0.9, [EosBan({2}, min_new_tokens=1)])
    >>> token_ids, probs = children(beam, torch.tensor([0.0, 1.0, 5.0]))
    >>> token_ids.tolist()
    [1, 0]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase, RepetitionPenaltyLogitsProcessor

from saffron_runtime.errors import ConfigError
from saffron_runtime.models.mrm import MultifurcationRewardModel
from saffron_runtime.search.beam import Beam
from saffron_runtime.search.decode import decode
from saffron_runtime.search.nucleus import nucleus

NEG_INF = float("-inf")


class LogitsFilter(Protocol):
    """Maps a beam's next-token logits ``[vocab]`` to processed logits of the same shape."""

    def __call__(self, beam: Beam, logits: torch.Tensor) -> torch.Tensor: ...


class RewardFilter(Protocol):
    """Maps the rewards ``[n]`` of a beam's candidate tokens ``[n]`` (with the policy's nucleus
    probabilities ``[n]`` of those tokens) to processed rewards."""

    def __call__(
        self, beam: Beam, token_ids: torch.Tensor, rewards: torch.Tensor, probs: torch.Tensor
    ) -> torch.Tensor: ...


class Temperature:
    """Divides logits by the temperature (sampling baselines only; Saffron ranks, never samples)."""

    def __init__(self, temperature: float) -> None:
        if temperature <= 0:
            raise ConfigError(
                f"temperature={temperature} must be > 0 to scale logits; use greedy choice for 0"
            )
        self.temperature = temperature

    def __call__(self, beam: Beam, logits: torch.Tensor) -> torch.Tensor:
        return logits / self.temperature


class EosBan:
    """Bans every EOS token while the beam has fewer than ``min_new_tokens`` tokens."""

    def __init__(self, eos_ids: Iterable[int], min_new_tokens: int) -> None:
        self.eos_ids = sorted(int(e) for e in eos_ids)
        self.min_new_tokens = min_new_tokens

    def __call__(self, beam: Beam, logits: torch.Tensor) -> torch.Tensor:
        if len(beam.ids) >= self.min_new_tokens or not self.eos_ids:
            return logits
        eos_token_mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        eos_token_mask[self.eos_ids] = True
        return logits.masked_fill(eos_token_mask, NEG_INF)


class GrammarBan:
    """Bans the tokens the beam's grammar state does not allow (tokens past its vocabulary too)."""

    def __call__(self, beam: Beam, logits: torch.Tensor) -> torch.Tensor:
        if beam.constraint is None:
            return logits
        allowed = beam.constraint.allowed()
        width = logits.shape[-1]
        disallowed = torch.ones(width, dtype=torch.bool, device=logits.device)
        disallowed[: allowed.shape[0]] = ~allowed[:width].to(logits.device)
        return logits.masked_fill(disallowed, NEG_INF)


class NoRepeatNGram:
    """Bans every token that would repeat an ``n``-gram of the beam's response (Hugging Face's
    ``no_repeat_ngram_size``): a small policy's beam search otherwise loops on a phrase."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ConfigError(f"no_repeat_ngram_size={n} must be at least 1 (0 turns the ban off)")
        self.n = n

    def banned(self, ids: Sequence[int]) -> list[int]:
        """The tokens that, appended to ``ids``, would complete an ``n``-gram ``ids`` already holds."""
        n = self.n
        if len(ids) < n:
            return []
        tail = tuple(ids[len(ids) - n + 1 :]) if n > 1 else ()
        return sorted(
            {ids[i + n - 1] for i in range(len(ids) - n + 1) if tuple(ids[i : i + n - 1]) == tail}
        )

    def __call__(self, beam: Beam, logits: torch.Tensor) -> torch.Tensor:
        banned = [t for t in self.banned(beam.ids) if t < logits.shape[-1]]
        if not banned:
            return logits
        mask = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        mask[banned] = True
        return logits.masked_fill(mask, NEG_INF)


class RepetitionPenalty:
    """Hugging Face's ``repetition_penalty`` on the beam's response tokens: a token already in the
    response has its logit divided by ``penalty`` (multiplied, if negative), so a phrase loop loses
    likelihood without a hard ban that would break code repeating a short token pattern."""

    def __init__(self, penalty: float) -> None:
        if penalty <= 0:
            raise ConfigError(f"repetition_penalty={penalty} must be positive (1.0 turns it off)")
        self.processor = RepetitionPenaltyLogitsProcessor(penalty)

    def __call__(self, beam: Beam, logits: torch.Tensor) -> torch.Tensor:
        width = logits.shape[-1]
        seen = [t for t in beam.ids if t < width]
        if not seen:
            return logits
        ids = torch.tensor([seen], dtype=torch.long, device=logits.device)
        return self.processor(ids, logits.unsqueeze(0)).squeeze(0)


class Nucleus:
    """The candidate children of a beam: the top-``top_p`` set of its filtered logits.

    Returns token ids and probabilities, most likely first (see :func:`nucleus`); a tiny
    ``top_p`` keeps only the most likely token (greedy choice).
    """

    def __init__(self, top_p: float, filters: Sequence[LogitsFilter] = ()) -> None:
        self.top_p = top_p
        self.filters = list(filters)

    def __call__(self, beam: Beam, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores_processed = logits
        for logits_filter in self.filters:
            scores_processed = logits_filter(beam, scores_processed)
        return nucleus(scores_processed, self.top_p)


class UnseenRewardMask:
    """MRM reward vectors indexed by policy token id, never-supervised tokens set to ``unseen``.

    This is Saffron's conservative exploration: an unseen token cannot outrank a supervised one.
    """

    def __init__(self, mrm: MultifurcationRewardModel, policy_vocab: int, unseen: float) -> None:
        self.mrm = mrm
        self.policy_vocab = policy_vocab
        self.unseen = unseen

    def __call__(self, raw_rewards: torch.Tensor) -> torch.Tensor:
        rewards = self.mrm.mask_unseen(raw_rewards, self.unseen)
        if self.mrm.token_map is not None:
            rewards = rewards[:, self.mrm.token_map[: self.policy_vocab].to(rewards.device)]
        return rewards


class ParentScoreSubstitution:
    """Children whose token :meth:`takes_parent` marks get their parent's score instead of their
    reward (a copy; the input is untouched, and returned as is when no child is marked)."""

    def takes_parent(self, token_ids: torch.Tensor) -> torch.Tensor:
        """Bool ``[n]``: which children take their parent's score."""
        raise NotImplementedError

    def parent_score(
        self, beam: Beam, hit: torch.Tensor, rewards: torch.Tensor, probs: torch.Tensor
    ) -> float:
        """The score the marked children take: the parent's own."""
        return beam.score

    def __call__(
        self, beam: Beam, token_ids: torch.Tensor, rewards: torch.Tensor, probs: torch.Tensor
    ) -> torch.Tensor:
        hit = self.takes_parent(token_ids).to(rewards.device)
        if not bool(hit.any()):
            return rewards
        score = self.parent_score(beam, hit, rewards, probs)
        return torch.where(hit, torch.full_like(rewards, score), rewards)


class EosRewardSubstitution(ParentScoreSubstitution):
    """An EOS child gets its parent's score: the last token's reward stands for an EOS the MRM
    was never trained on (or masks as unseen), so finishing is neither free nor forbidden."""

    def __init__(self, eos_ids: Iterable[int]) -> None:
        self.eos_ids = frozenset(int(e) for e in eos_ids)

    def takes_parent(self, token_ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([t in self.eos_ids for t in token_ids.tolist()], dtype=torch.bool)


class UnseenRewardSubstitution(ParentScoreSubstitution):
    """A never-supervised child gets its parent's score instead of ``unseen_reward``: the MRM knows
    nothing of it, so it neither condemns the beam (a rare name in a benign answer) nor clears it."""

    def __init__(self, unseen: torch.Tensor, *, siblings_cap: bool = False) -> None:
        self.unseen = unseen  # [policy vocab] bool, True = never supervised
        self.siblings_cap = siblings_cap

    def parent_score(
        self, beam: Beam, hit: torch.Tensor, rewards: torch.Tensor, probs: torch.Tensor
    ) -> float:
        """The parent's score, or with ``siblings_cap`` at most the policy-weighted mean reward of the
        seen siblings: the MRM's present view of this context, so a run of unseen tokens cannot carry
        a score the MRM stopped giving several tokens ago ("Max Max Max ...")."""
        if not self.siblings_cap:  # the common case: no mean to compute on the token loop
            return beam.score
        mean = seen_siblings_mean(hit, rewards, probs)
        return beam.score if mean is None else min(beam.score, mean)

    def takes_parent(self, token_ids: torch.Tensor) -> torch.Tensor:
        return unseen_children(self.unseen, token_ids)


def unseen_children(unseen: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """Bool ``[n]``: which children the MRM never saw supervised (ids past the mask count as seen)."""
    ids = token_ids.to(unseen.device)
    inside = ids < unseen.shape[0]
    hit = torch.zeros_like(ids, dtype=torch.bool)
    hit[inside] = unseen[ids[inside]]
    return hit


def seen_siblings_mean(hit: torch.Tensor, rewards: torch.Tensor, probs: torch.Tensor) -> float | None:
    """Policy-weighted mean reward of the children not marked in ``hit`` (None when all are): the
    MRM's view of the node itself, what its children's rewards share."""
    seen = ~hit
    if not bool(seen.any()):
        return None
    weights = probs.to(rewards.device)[seen].float()
    return float((weights * rewards[seen].float()).sum() / weights.sum().clamp_min(1e-12))


class WithinPrefixShrinkage:
    """Keeps only ``weight`` of each child's difference from its seen siblings' policy-weighted mean
    reward (``mean + weight * (reward - mean)``), and gives never-supervised children the mean.

    The MRM's level across prefixes carries its judge's signal, its spread among one node's children
    mostly noise (the judge's children differ far less), and under an absolute ``safe_threshold`` that
    noise picks words: a content word the MRM happens to score high passes, the policy's "is" does not.
    Shrinking the spread leaves the safe/unsafe call to the node's level. A node whose children are all
    unseen keeps its parent's score."""

    def __init__(self, unseen: torch.Tensor | None, weight: float) -> None:
        self.unseen = unseen  # [policy vocab] bool, True = never supervised; None: all seen
        self.weight = weight

    def __call__(
        self, beam: Beam, token_ids: torch.Tensor, rewards: torch.Tensor, probs: torch.Tensor
    ) -> torch.Tensor:
        hit = (
            unseen_children(self.unseen, token_ids).to(rewards.device)
            if self.unseen is not None
            else torch.zeros_like(token_ids, dtype=torch.bool, device=rewards.device)
        )
        mean = seen_siblings_mean(hit, rewards, probs)
        if mean is None:
            return torch.full_like(rewards, beam.score)
        shrunk = mean + self.weight * (rewards - mean)
        return torch.where(hit, torch.full_like(rewards, mean), shrunk)


class StopCriterion(Protocol):
    """Says whether a beam with these response ids has ended."""

    def __call__(self, ids: list[int]) -> bool: ...


class EosStop:
    """A beam ends with an EOS token."""

    def __init__(self, eos_ids: Iterable[int]) -> None:
        self.eos_ids = frozenset(int(e) for e in eos_ids)

    def __call__(self, ids: list[int]) -> bool:
        return bool(ids) and ids[-1] in self.eos_ids


class StopStrings:
    """A beam ends once its text contains a stop string; the final text is cut before it."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stops: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stops = list(stops)

    def __call__(self, ids: list[int]) -> bool:
        if not self.stops:
            return False
        text = decode(self.tokenizer, ids)
        return any(s in text for s in self.stops)

    def truncate(self, text: str) -> str:
        """``text`` cut at each stop string it contains, in the configured order."""
        for s in self.stops:
            i = text.find(s)
            if i >= 0:
                text = text[:i]
        return text
